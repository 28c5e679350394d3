"""A notebook cell: upload a DataFrame with a progress bar.

Jupyter already runs an event loop, so a cell awaits `engine.upload(...)` directly
(`engine.upload_sync` refuses to run there). Paste the body of `cell` into a notebook
with `await cell(df)` or its lines at top level; as a script, `asyncio.run` plays the
notebook's part:

    python examples/notebook_cell.py people.csv    # see README.md
"""

# %%
from __future__ import annotations

import asyncio
import json
import os
import sys

import pandas as pd
from tqdm.auto import tqdm  # a widget in Jupyter, text elsewhere

import engine


async def cell(df: pd.DataFrame) -> engine.Report:
    """Upload `df`, showing rows done (sent or rejected) as they happen."""
    with tqdm(total=len(df), unit="row") as bar:

        def show(p: engine.Progress) -> None:
            bar.update(p.rows_sent + p.rows_rejected - bar.n)
            bar.set_postfix(rejected=p.rows_rejected, batches=p.batches_sent)

        return await engine.upload(
            df,
            audience=os.environ["META_AUDIENCE_ID"],
            ad_account=os.environ["META_AD_ACCOUNT"],
            api_base=os.environ.get("META_API_BASE", "https://graph.facebook.com"),
            default_country_code="1",
            progress=show,
        )


# %%
if __name__ == "__main__":
    report = asyncio.run(cell(pd.read_csv(sys.argv[1], dtype=str)))
    print(json.dumps(report.to_dict()))
