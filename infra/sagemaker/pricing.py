"""What SageMaker instances cost: a default price table (override with ``--set prices=…``) and cost arithmetic."""

from __future__ import annotations

PRICES_AS_OF = "2025-06"
PRICES_SOURCE = "https://aws.amazon.com/sagemaker/pricing/ (real-time inference, on-demand, us-east-1)"
# USD per instance-hour, us-east-1, on-demand real-time inference, as published on PRICES_SOURCE around
# PRICES_AS_OF. Written down from the pricing page, not fetched (this project's machines have no route to AWS):
# check them for your region and date, and override with --set 'prices={ml.m5.large: 0.115}'. Batch transform
# bills the same instance types at the same rates in us-east-1.
DEFAULT_PRICES: dict[str, float] = {
    "ml.t2.medium": 0.056,
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.large": 0.102,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.c5.4xlarge": 0.816,
    "ml.g4dn.xlarge": 0.7364,
    "ml.g4dn.2xlarge": 1.0528,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
}


def hourly_cost(prices: dict[str, float], instance_type: str, count: int) -> float | None:
    """USD per hour of ``count`` instances of ``instance_type``; None when the table has no price for it."""
    price = prices.get(instance_type)
    return None if price is None else round(price * count, 4)


def run_cost(prices: dict[str, float], instance_type: str, count: int, seconds: float) -> dict[str, float]:
    """Instance-hours and USD of ``count`` instances running ``seconds`` (USD only when the price is known)."""
    hours = count * seconds / 3600
    price = prices.get(instance_type)
    return {"instance_hours": round(hours, 6), **({"cost_usd": round(hours * price, 6)} if price is not None else {})}
