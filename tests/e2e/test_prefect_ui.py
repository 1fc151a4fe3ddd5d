"""The Prefect UI of `slmops up`, in a real browser: Debian's Chromium driven by Playwright for Python.

The browser is launched from /usr/bin/chromium (no browser download). The test finds the pipeline deployment,
opens its run form, reads the typed fields with their descriptions, submits a run with one changed field (the
gate's floors, so the seconds-sized demo assets can pass), and the platform's worker completes the run.
Screenshots are kept under test-artifacts/browser/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.platform_harness import REPO, wait_for

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "browser"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: the README's test set-up installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed here; CI installs it")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def field(page, description: str):
    """The innermost form property whose help text contains ``description``."""
    return page.locator("div.p-label.schema-form-property").filter(
        has=page.locator(".schema-form-property__description", has_text=description)).last


def test_a_pipeline_run_submitted_from_the_prefect_ui_form_completes(platform, browser) -> None:
    from playwright.sync_api import expect

    ui = platform.state.prefect_api_url.removesuffix("/api")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []  # what the browser saw go wrong, for the failure message
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.request.method} {r.url}: {r.text()[:300]}")
            if r.status >= 400 and "/api/" in r.url else None)
    # the deployments list shows the pipeline
    page.goto(f"{ui}/deployments", wait_until="networkidle")
    page.get_by_role("link", name="demo-pipeline").click()
    page.wait_for_url("**/deployments/deployment/**")
    deployment_id = page.url.rsplit("/", 1)[-1].split("?")[0]
    page.screenshot(path=SHOTS / "1-deployment.png")
    # its run form shows typed fields with their descriptions (from the pydantic config's Field descriptions)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    page.wait_for_url("**/run**")
    for help_text in ("Train split: local JSONL path or s3:// URI", "Optimizer steps.", "LoRA rank.",
                      "Weights per int4 quantization block.", "Floors per metric of the served artifact"):
        expect(field(page, help_text)).to_be_visible()
    max_length = field(page, "Tokens per example; longer rows are rejected.").locator("input")
    expect(max_length).to_have_attribute("type", "number")
    expect(max_length).to_have_value("96")
    # one changed field: no exact-match floor (the tiny demo model cannot reach the demo's 0.3)
    floors = field(page, "Floors per metric of the served artifact").locator("textarea")
    floors.scroll_into_view_if_needed()
    # pasted as a person would (one input event); the code editor re-renders as it validates, so check it settled
    for _ in range(5):
        floors.click()
        floors.press("Control+A")
        page.keyboard.insert_text("{}")
        page.wait_for_timeout(500)
        if floors.input_value() == "{}":
            break
    expect(floors).to_have_value("{}")
    page.screenshot(path=SHOTS / "2-run-form.png")
    page.get_by_role("button", name="Submit").click()

    def submitted() -> list[dict]:
        return [r for r in platform.flow_runs("slm_pipeline") if r["deployment_id"] == deployment_id]

    try:
        try:
            wait_for(submitted, timeout_s=45, what="the run submitted from the form")
        except AssertionError:
            # on two busy cores the UI sometimes answers Submit with its generic "Oops. Something went wrong" toast
            # and sends no run (seen in 2 of 5 full runs, never alone); a person would press Submit again
            if not page.get_by_text("Something went wrong").count():
                raise
            page.screenshot(path=SHOTS / "2a-oops.png", full_page=True)
            page.get_by_role("button", name="Submit").click()
            wait_for(submitted, timeout_s=60, what=f"the run submitted again (the browser saw: {problems})")
    finally:
        page.screenshot(path=SHOTS / "2b-after-submit.png", full_page=True)
    runs = submitted()
    assert len(runs) == 1, "one run was submitted"
    run = runs[0]
    run_id = run["id"]
    config = run["parameters"]["config"]
    assert config["gate"]["min"] == {} and config["gate"]["vs_champion"] == ["exact_match"]
    assert config["distill"]["steps"] == 600 and len(config["finetune"]["target_modules"]) == 7
    # the platform's worker runs it to completion
    wait_for(lambda: platform.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"] in
             ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), timeout_s=900, what="the pipeline run to finish")
    final = platform.prefect("GET", f"/flow_runs/{run_id}").json()
    page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.screenshot(path=SHOTS / "3-finished-run.png")
    assert final["state_type"] == "COMPLETED", final["state"]["message"]
    assert platform.mlflow().get_model_version_by_alias("demo-slm", "champion").version == "1"
