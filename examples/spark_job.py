"""A Spark job: executors normalize and hash partitions in parallel; the driver uploads.

Raw identifiers never leave the executors: each partition is normalized and SHA-256
hashed there by the engine's own rules (`engine.hash_rows`), and the driver streams the
hashed rows into one upload, one session, with `prehashed=True`. A row the executors
reject travels as the engine's `Reject`, so the report counts it under its reason.

Without pyspark installed, `local_partitions` stands in for Spark: a pool of processes
runs the same `hash_partition` over the partitions in parallel, as executors would. That
is what the tests run; it checks the partition function and the driver's upload, not Spark.

    python examples/spark_job.py people.csv    # see README.md
"""

from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import engine

# Payload keys, in order; the CSV's columns (email, phone, first_name...) bind by alias.
SCHEMA = "EMAIL,PHONE,FN,LN,ZIP,CT,ST,COUNTRY"

Hashed = tuple[str, ...] | engine.Reject


def hash_partition(rows: Iterable[Mapping[str, Any]]) -> list[Hashed]:
    """One partition's rows (dicts), normalized and hashed: a tuple in SCHEMA order per row,
    or for a row no key can use, the engine's `Reject` saying why ("invalid_email"...)."""
    return engine.hash_rows(rows, SCHEMA, default_country_code="1")


def upload_hashed(rows: Iterable[Hashed]) -> dict[str, Any]:
    """The driver's part: one upload of already hashed rows, streamed as they arrive."""
    report = engine.upload_sync(
        engine.Rows(rows, columns=SCHEMA.split(",")),
        audience=os.environ["META_AUDIENCE_ID"],
        ad_account=os.environ["META_AD_ACCOUNT"],
        api_base=os.environ.get("META_API_BASE", "https://graph.facebook.com"),
        prehashed=True,
    )
    if report.status != "completed":
        raise RuntimeError(f"audience upload {report.status}: {report.message}")
    return report.to_dict()


def spark_partitions(path: str) -> Iterator[Hashed]:
    """Hashed rows from Spark: read the CSV as text, hash on executors, stream to the driver."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("meta-audience").getOrCreate()
    people = spark.read.csv(path, header=True)  # no inferSchema: identifiers stay text
    hashed = people.rdd.mapPartitions(lambda rows: hash_partition(r.asDict() for r in rows))
    return hashed.toLocalIterator()  # a partition at a time, never the whole set in the driver


def local_partitions(path: str, partitions: int = 4) -> Iterator[Hashed]:
    """Spark's part without pyspark: a process per partition hashes it, as an executor would."""
    with open(path, newline="", encoding="utf-8") as f:
        people = list(csv.DictReader(f))
    size = max(1, -(-len(people) // partitions))
    parts = [people[start : start + size] for start in range(0, len(people), size)]
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, like executors
    with ProcessPoolExecutor(partitions, mp_context=spawn) as pool:
        for hashed in pool.map(hash_partition, parts):  # all at once; back in partition order
            yield from hashed


def main(path: str) -> dict[str, Any]:
    """Spark when it is installed, else the local stand-in; then one upload from the driver."""
    if importlib.util.find_spec("pyspark") is None:
        return upload_hashed(local_partitions(path))
    return upload_hashed(spark_partitions(path))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
