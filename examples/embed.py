"""Embedding Sovrium in a Python program: no server, the same validation and storage.

Run from this directory:  python embed.py
"""

import os
import tempfile

import sovrium

HERE = os.path.dirname(os.path.abspath(__file__))

with tempfile.TemporaryDirectory() as tmp, \
        sovrium.App(os.path.join(HERE, "inventory.yaml"), db_path=os.path.join(tmp, "inventory.db")) as app:
    suppliers, items = app.table("suppliers"), app.table("items")
    acme = suppliers.create({"name": "Acme Fasteners", "email": "Sales@Acme.example"})
    for name, qty in [("M4 bolt", 120), ("M4 nut", 3), ("Wire 1.5mm", 2)]:
        items.create({"name": name, "quantity": qty, "unit_price": 0.12, "supplier": acme["id"],
                      "category": "fasteners" if name.startswith("M4") else "electrical"})

    try:
        items.create({"name": "Broken", "quantity": -1})
    except sovrium.ValidationError as exc:
        print("rejected:", exc.errors)

    low = items.list(filter={"field": "needs_reorder", "operator": "isTrue"}, sort="quantity")
    print("to reorder:", [r["fields"]["name"] for r in low["records"]])
    print("supplier e-mail (lookup):", low["records"][0]["fields"]["supplier_email"])
    print("items of", acme["fields"]["name"], "=", suppliers.get(acme["id"])["fields"]["item_count"])
    print("all items:", [r["fields"]["name"] for r in items.iterate(batch_size=2)])
