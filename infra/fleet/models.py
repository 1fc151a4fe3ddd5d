"""What the fleet controller and its device agents exchange: devices, per-hardware variants, releases, the
rollout policy, desired state and reports."""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from tasks.config import StageConfig

HardwareClass = Literal["cpu-avx2", "cpu-avx512", "arm64", "gpu", "npu"]
HARDWARE_CLASSES: tuple[str, ...] = HardwareClass.__args__
RuntimeKind = Literal["local", "ollama", "foundry"]
VariantKind = Literal["onnx-int4", "onnx-int8", "gguf-q4_k_m", "gguf-q8_0", "foundry"]
RUNTIME_VARIANTS: dict[str, tuple[str, ...]] = {  # what each device runtime can load
    "local": ("onnx-int4", "onnx-int8"),
    "ollama": ("gguf-q4_k_m", "gguf-q8_0"),
    "foundry": ("foundry", "onnx-int4", "onnx-int8"),
}
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """``labels`` when every key and value is [A-Za-z0-9._/-], up to 63 characters; else a ValueError."""
    bad = [f"{k}={v}" for k, v in labels.items() if not (LABEL.match(k) and LABEL.match(v))]
    if bad:
        raise ValueError(f"labels are [A-Za-z0-9._/-], up to 63 characters: {', '.join(bad)}")
    return labels


class DeviceSpec(BaseModel):
    """What a device says about itself when it enrolls (labels also come from its enrollment token)."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels groups select on, e.g. site=lyon.")
    hw_class: HardwareClass = Field(description="Hardware class: cpu-avx2, cpu-avx512, arm64, gpu or npu.")
    accel_memory_mb: int | None = Field(None, ge=0, description="gpu/npu: accelerator memory in MB.")
    runtime: RuntimeKind = Field(description="What serves on the device: local (our server), ollama or foundry.")
    memory_mb: int = Field(gt=0, description="Total memory in MB.")
    disk_mb: int = Field(gt=0, description="Disk for models in MB.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


class Variant(BaseModel):
    """One artifact of a release, built for some hardware and runtime."""

    kind: VariantKind
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the artifact's bytes.")
    size_bytes: int = Field(gt=0, description="Bytes to download and keep on disk.")
    memory_bytes: int = Field(gt=0, description="Memory needed to load it.")
    url: str = Field(description="Where the agent downloads it (relative: on the controller's artifact server).")


class GoldenPrompt(BaseModel):
    """A prompt every device runs on the new version before switching to it."""

    prompt: str = Field(min_length=1)
    expect: str | None = Field(None, description="Text the answer must contain (None: any non-empty answer).")


class Release(BaseModel):
    """A registered version as the fleet sees it: its variants and golden prompts."""

    model: str
    version: str
    variants: list[Variant] = Field(min_length=1)
    golden: list[GoldenPrompt] = Field(default_factory=lambda: [GoldenPrompt(prompt="Reverse: a b c")])

    def variant(self, kind: str) -> Variant | None:
        """The variant of ``kind``, if the release has one."""
        return next((v for v in self.variants if v.kind == kind), None)


DEFAULT_PREFERENCE: dict[str, list[str]] = {
    "cpu-avx2": ["onnx-int4", "gguf-q4_k_m", "foundry"],
    "cpu-avx512": ["onnx-int8", "onnx-int4", "gguf-q8_0", "gguf-q4_k_m", "foundry"],
    "arm64": ["gguf-q4_k_m", "onnx-int4", "foundry"],
    "gpu": ["onnx-int8", "gguf-q8_0", "onnx-int4", "foundry"],
    "npu": ["foundry", "onnx-int4", "gguf-q4_k_m"],
}


class VariantPolicy(StageConfig):
    """Which variant each hardware class gets: the first kind in its list that the release has and the device's
    runtime loads."""

    prefer: dict[HardwareClass, list[VariantKind]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PREFERENCE.items()},
        description="Per hardware class, variant kinds in order of preference.")

    def pick(self, hw_class: str, runtime: str, release: Release) -> Variant | None:
        """The variant a device of ``hw_class`` running ``runtime`` gets, or None when none fits its runtime."""
        loadable = RUNTIME_VARIANTS[runtime]
        for kind in self.prefer.get(hw_class) or DEFAULT_PREFERENCE[hw_class]:
            if kind in loadable and (found := release.variant(kind)) is not None:
                return found
        return None


class RolloutPolicy(StageConfig):
    """How a release rolls out to a group: waves, thresholds, halts, budget, retries, approval."""

    canary: int = Field(2, ge=1, description="Devices of each hardware class in the first wave.")
    waves: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0], min_length=1,
                               description="Then cumulative percentages of each class, ending at 100.")
    success_threshold: float = Field(0.9, ge=0, le=1, description="Share of a wave's finished devices of each "
                                     "hardware class that must succeed for the class to go on (else it halts).")
    halt_failures: int = Field(3, ge=1, description="A hardware class halts at this many failed devices...")
    halt_percent: float = Field(20.0, gt=0, le=100, description="...or at this failure %, once min_devices of it "
                                "have finished.")
    min_devices: int = Field(5, ge=1, description="Finished devices of a class before halt_percent applies.")
    max_concurrent: int = Field(10, ge=1, description="Devices updating at once, over the whole rollout.")
    wave_timeout_s: float = Field(1800.0, gt=0, description="A wave ends after this long; devices still offline "
                                  "then are not failures and update when they come back.")
    offline_after_s: float = Field(120.0, gt=0, description="A device this long past the poll it was told to make "
                                   "is offline.")
    apply_timeout_s: float = Field(900.0, gt=0, description="An agent gives up an update after this long; the "
                                   "controller frees the slot of an updating device silent for this long plus "
                                   "offline_after_s.")
    retries: int = Field(1, ge=0, description="Retries of a device whose download or agent failed.")
    penalty_after: int = Field(2, ge=1, description="Failed attempts (any rollout) that put a device in the "
                               "penalty box: it gets no more updates until `slmops fleet release DEVICE`.")
    approval: bool = Field(False, description="Pause between waves for a person's yes/no (Prefect UI or "
                           "`slmops fleet resume`).")
    max_ttft_regression: float = Field(25.0, ge=0, description="Health: time to first token at most this % "
                                       "above that device's previous version.")
    max_tps_regression: float = Field(25.0, ge=0, description="Health: tokens/s at most this % below that "
                                      "device's previous version.")
    latency_slack_ms: float = Field(20.0, ge=0, description="A latency regression counts only when it is also "
                                    "this many ms (TTFT) or a tenth of it per token (decode): timer noise on a fast "
                                    "device is no regression.")
    poll_s: float = Field(60.0, gt=0, description="How often agents poll (each with ±50% jitter).")

    @field_validator("waves")
    @classmethod
    def _waves(cls, waves: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(waves)) or not waves[0] > 0 or waves[-1] != 100:
            raise ValueError("waves are increasing percentages ending at 100, e.g. [10, 50, 100]")
        return waves




class Running(BaseModel):
    """What a device runs now."""

    model: str | None = None
    version: str | None = None
    kind: str | None = None
    digest: str | None = None


class Heartbeat(BaseModel):
    """An agent's poll: what it runs and what it has free."""

    running: Running = Field(default_factory=Running)
    free_memory_mb: int = Field(ge=0)
    free_disk_mb: int = Field(ge=0)
    on_disk: list[str] = Field(default_factory=list, description="Digests of verified artifacts kept on disk.")


class Desired(BaseModel):
    """The controller's answer to a poll: what the device should run, and when to poll again."""

    rollout_id: int | None = None
    release: Release | None = Field(None, description="None: keep running what you run.")
    rollback: bool = Field(False, description="Go back to this release (kept on disk): switch without checks.")
    variant: Variant | None = None
    max_ttft_regression: float = 25.0
    max_tps_regression: float = 25.0
    apply_timeout_s: float = 900.0
    latency_slack_ms: float = 20.0
    next_poll_s: float = 60.0


Outcome = Literal["ok", "failed", "rolled-back"]
FailureKind = Literal["unfit", "download", "golden", "latency", "load", "agent"]
RETRIED = ("download", "load", "agent")  # failures worth another attempt; unfit/golden/latency are the model's


class Report(BaseModel):
    """An agent's report after applying (or refusing) a desired state."""

    rollout_id: int
    outcome: Outcome
    failure: FailureKind | None = None
    reason: str = ""
    running: Running
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    loaded_new: bool = Field(False, description="The new version was loaded and answered (the blast radius).")
