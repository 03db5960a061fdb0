"""Make the README's screenshots of the web page: docs/dashboard.png and docs/run.png.

    python docs/screenshots.py [--chromium /usr/bin/chromium]

Stores a few runs of a small order workflow in a fresh SQLite file (completed, failed,
one waiting for an approval), serves the page for it in this process and photographs
it with headless Chromium (Playwright).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tinyworkflow  # noqa: E402
from tinyworkflow import RetryPolicy, activity, workflow  # noqa: E402

webui = tinyworkflow._companion("webui")


@activity(name="reserve_stock")
async def reserve_stock(order: dict) -> dict:
    await asyncio.sleep(0.12)
    return {"reserved": order["items"]}


@activity(name="charge_card", retry_policy=RetryPolicy(max_retries=0))
async def charge_card(order: dict) -> dict:
    await asyncio.sleep(0.25)
    if order["cents"] % 100 == 99 and order["cents"] < 1000:
        raise RuntimeError("card declined: insufficient funds")
    return {"charged": order["cents"]}


@activity(name="send_receipt")
async def send_receipt(order: dict) -> str:
    await asyncio.sleep(0.05)
    return f"receipt sent to {order['email']}"


@workflow(name="place_order", retry_policy=RetryPolicy(max_retries=0))
async def place_order(ctx) -> dict:
    order = ctx.get_input("order")
    stock = await ctx.execute_activity(reserve_stock, order)
    if order["cents"] > 50_000 and not await ctx.wait_for_approval("finance", timeout=86400):
        return {"status": "rejected"}
    payment = await ctx.execute_activity(charge_card, order)
    receipt = await ctx.execute_activity(send_receipt, order)
    return {"stock": stock, "payment": payment, "receipt": receipt}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tw-shots-")
    async with tinyworkflow.TinyWorkflowClient(f"sqlite+aiosqlite:///{folder}/shop.db") as client:
        done = None
        for i, cents in enumerate([1999, 4500, 120_000, 2599, 75_000, 899]):
            order = {"id": f"order-{1040 + i}", "items": ["book"] * (i % 3 + 1),
                     "cents": cents, "email": f"customer{i}@example.com"}
            run_id = await client.start_workflow("place_order", {"order": order})
            done = run_id if cents == 2599 else done
        await client.recover_workflows()  # executes them: one stops to wait for approval
        ui = await webui.serve(client, port=0)
        try:
            await asyncio.to_thread(photograph, args.chromium, ui.url, done)
        finally:
            await ui.stop()


def photograph(chromium: str, url: str, run_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(url)
        page.wait_for_selector(".card")
        page.wait_for_timeout(300)
        page.screenshot(path=os.path.join(ROOT, "docs", "dashboard.png"))
        page.goto(f"{url}runs/{run_id}")
        page.wait_for_selector("#steps")
        page.wait_for_timeout(300)
        page.set_viewport_size({"width": 1100, "height": 1000})
        page.screenshot(path=os.path.join(ROOT, "docs", "run.png"))
        browser.close()
    print("wrote docs/dashboard.png and docs/run.png")


if __name__ == "__main__":
    asyncio.run(main())
