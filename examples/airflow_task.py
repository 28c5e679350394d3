"""An Airflow task that uploads a daily customer export to a Custom Audience.

The task body, `upload_export`, is plain Python: it runs (and is tested) without Airflow.
The DAG around it is defined only where Airflow is installed. Airflow tasks are
synchronous, so the body uses `engine.upload_sync`.

    python examples/airflow_task.py people.csv     # the task body alone; see README.md
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any

import engine


def upload_export(path: str) -> dict[str, Any]:
    """Upload one export file; return its report as a dict (what Airflow keeps in XCom).

    A report that is not "completed" fails the task, so Airflow's retries and alerts apply.
    """
    report = engine.upload_sync(
        path,
        audience=os.environ["META_AUDIENCE_ID"],
        ad_account=os.environ["META_AD_ACCOUNT"],
        api_base=os.environ.get("META_API_BASE", "https://graph.facebook.com"),
        default_country_code="1",  # the export's phone numbers are North American
    )
    if report.status != "completed":
        raise RuntimeError(f"audience upload {report.status}: {report.message}")
    return report.to_dict()


try:
    from airflow.decorators import dag, task
except ImportError:  # the task body above stays usable without Airflow
    pass
else:

    @dag(
        schedule="@daily",
        start_date=datetime.datetime(2025, 1, 1),
        catchup=False,
        tags=["meta", "audiences"],
    )
    def meta_audience_sync() -> None:
        """Upload each day's export; META_* settings come from the worker's environment."""
        task(retries=2)(upload_export)("/data/exports/{{ ds }}/customers.csv")

    meta_audience_sync()


if __name__ == "__main__":
    print(json.dumps(upload_export(sys.argv[1])))
