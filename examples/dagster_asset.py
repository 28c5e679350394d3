"""A Dagster asset that keeps a Custom Audience in step with a customers DataFrame.

`upload_customers` is plain Python over a pandas DataFrame: it runs (and is tested)
without Dagster. The assets are defined only where Dagster is installed.

    python examples/dagster_asset.py people.csv    # the asset's body alone; see README.md
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pandas as pd

import engine


def read_customers(path: str) -> pd.DataFrame:
    """The customers table. Identifiers are read as text: zips keep their leading zeros."""
    return pd.read_csv(path, dtype=str)


def upload_customers(customers: pd.DataFrame) -> dict[str, Any]:
    """Upload the DataFrame (read a slice at a time, never copied); return the report."""
    report = engine.upload_sync(
        customers,
        audience=os.environ["META_AUDIENCE_ID"],
        ad_account=os.environ["META_AD_ACCOUNT"],
        api_base=os.environ.get("META_API_BASE", "https://graph.facebook.com"),
        default_country_code="1",
    )
    if report.status != "completed":
        raise RuntimeError(f"audience upload {report.status}: {report.message}")
    return report.to_dict()


try:
    import dagster as dg
except ImportError:  # the functions above stay usable without Dagster
    pass
else:

    @dg.asset
    def customers() -> pd.DataFrame:
        """Today's customers (a CSV here; a warehouse query in real life)."""
        return read_customers(os.environ.get("CUSTOMERS_CSV", "customers.csv"))

    @dg.asset
    def meta_audience(customers: pd.DataFrame) -> dg.MaterializeResult:
        """The Custom Audience, uploaded from `customers`; the report's counts as metadata."""
        report = upload_customers(customers)
        keys = ("rows_read", "rows_rejected", "rows_sent", "batches_sent", "session_id")
        return dg.MaterializeResult(metadata={k: report[k] for k in keys})

    defs = dg.Definitions(assets=[customers, meta_audience])


if __name__ == "__main__":
    print(json.dumps(upload_customers(read_customers(sys.argv[1]))))
