"""Benchmark of the record lifecycle (issue 4). Not collected by pytest; run it by hand:

    python tests/bench_lifecycle.py

Server time, measured in-process through the service functions the HTTP handlers call (median of
several runs): batch create of 1,000 records, upsert of 100 records, a history page of a record
with 1,000 revisions, an activity page over 1,000,000 revisions, and a trash page of a table with
100,000 trashed records. The database is built once through the service layer and cached in the
temporary directory.
"""

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sovrium  # noqa: E402

CONFIG = {"name": "bench-lifecycle", "settings": {"batchLimit": 1000}, "tables": [
    {"id": 1, "name": "items", "fields": [
        {"id": 1, "name": "title", "type": "single-line-text", "required": True},
        {"id": 2, "name": "sku", "type": "single-line-text", "unique": True},
        {"id": 3, "name": "qty", "type": "integer"},
        {"id": 4, "name": "status", "type": "single-select", "options": ["new", "open", "done"]}]},
    {"id": 2, "name": "trashy", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}]},
]}
REVISIONS = 1_000_000
TRASHED = 100_000


def median_ms(fn, runs=7):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def build(path):
    started = time.perf_counter()
    with sovrium.App(CONFIG, db_path=path, env={}) as app:
        ctx = app.context(sovrium.SYSTEM)
        items, trashy = app.schema.by_name["items"], app.schema.by_name["trashy"]
        # One record with 1,000 revisions.
        rid = app.table("items").create({"title": "hot", "qty": 0})["id"]
        for i in range(999):
            with app.db.write() as txn:
                sovrium.update_record(ctx, txn, items, rid, {"qty": i + 1}, None)
        # 100,000 trashed records (each has a create and a delete revision).
        done = 0
        while done < TRASHED:
            with app.db.write() as txn:
                ids = [sovrium.insert_record(ctx, txn, trashy, {"title": f"t{done + i}"}) for i in range(5000)]
                sovrium.delete_records(ctx, txn, trashy, ids, False)
            done += 5000
            print(f"\r  trashed {done}/{TRASHED}", end="", file=sys.stderr, flush=True)
        # Fill the activity log up to 1,000,000 revisions.
        total = app.db.conn().execute("SELECT count(*) FROM revisions").fetchall()[0][0]
        n = 0
        while total < REVISIONS:
            with app.db.write() as txn:
                for _ in range(10000):
                    sovrium.insert_record(ctx, txn, items, {"title": f"bulk {n}", "qty": n % 100})
                    n += 1
            total += 10000
            print(f"\r  revisions {total}/{REVISIONS}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        app.db.conn().execute("PRAGMA optimize = 0x10002")
    print(f"  built in {time.perf_counter() - started:.0f} s")
    return rid


def main():
    path = os.path.join(tempfile.gettempdir(), "sovrium-bench-lifecycle-v2.db")
    if not os.path.exists(path):
        build(path)
    with sovrium.App(CONFIG, db_path=path, env={}) as app:
        ctx = lambda: app.context(sovrium.SYSTEM)
        hot = app.db.conn().execute("SELECT record_id FROM revisions GROUP BY record_id "
                                    "ORDER BY count(*) DESC LIMIT 1").fetchall()[0][0]
        counter = [0]

        def batch_create():
            counter[0] += 1
            rows = [{"title": f"batch {counter[0]}-{i}", "sku": f"B{counter[0]}-{i}", "qty": i} for i in range(1000)]
            sovrium.records_batch_create(ctx(), "items", {"records": rows, "returnRecords": True})

        def upsert():
            counter[0] += 1
            rows = [{"sku": f"U{i}", "title": f"upsert {counter[0]}", "qty": counter[0]} for i in range(100)]
            sovrium.records_upsert(ctx(), "items", {"records": rows, "fieldsToMergeOn": ["sku"]})

        figures = {
            "batch create of 1,000 records (returnRecords)": median_ms(batch_create),
            "upsert of 100 records (merge on a unique field)": median_ms(upsert),
            "history page of a record with 1,000 revisions": median_ms(
                lambda: sovrium.records_history(ctx(), "items", hot, {"limit": "50"})),
            "activity page over 1,000,000 revisions": median_ms(
                lambda: sovrium.activity_list(ctx(), {"limit": "50"})),
            "activity page filtered by table and action": median_ms(
                lambda: sovrium.activity_list(ctx(), {"tableId": "2", "action": "delete", "limit": "50"})),
            "trash page of a table with 100,000 trashed records": median_ms(
                lambda: sovrium.records_list(ctx(), "trashy", {"limit": "50"}, trash=True)),
        }
        revisions = app.db.conn().execute("SELECT count(*) FROM revisions").fetchall()[0][0]
    print(f"sovrium {sovrium.__version__}, SQLite {sovrium.apsw.sqlite_lib_version()}, {os.cpu_count()} cores, "
          f"{revisions} revisions")
    for label, ms in figures.items():
        print(f"  {label:<52} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
