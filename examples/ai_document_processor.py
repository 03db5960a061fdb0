"""AI document processing: extract text, then classify, summarise and find entities at once.

    python examples/ai_document_processor.py

One "ai_document_processor" run per document, three started together for a worker in
this process. Each run extracts the text, analyses it with three model calls side by
side (ctx.execute_parallel), then aggregates them. The "models" are deterministic
stand-ins: keyword rules classify, the first two sentences summarise, regular expressions
find names, e-mail addresses and dates. Every call is a recorded step, so a run that is
interrupted resumes after its last finished call instead of paying for all of them again.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio
import re

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow

DOCUMENTS = {  # stand-in for an object store
    "invoice-017.html": "<html><h1>Invoice 2024-017</h1><p>Acme Corp billed Globex Ltd "
                        "4,200 EUR on 2024-03-01.</p><p>Amount due by 2024-03-31; questions "
                        "to billing@acme.example.</p></html>",
    "ticket-88.eml": "From: jane.doe@example.com\nSubject: Export broken\n\nHi, the export "
                     "fails with an error since 2024-05-02. Please help!\n-- \nJane Doe, "
                     "jane.doe@example.com",
    "nda-globex.txt": "This agreement between Globex Ltd and Initech Inc starts on 2024-01-15. "
                      "Each party keeps the terms confidential. Contact: legal@globex.example",
}
LABELS = {"invoice": {"invoice", "billed", "due", "amount"},
          "support": {"error", "fails", "help", "broken"},
          "contract": {"agreement", "party", "terms", "confidential"}}


@activity(name="doc_extract_text")
def extract_text(name: str) -> str:
    raw = DOCUMENTS[name]
    if name.endswith(".html"):
        raw = re.sub(r"<[^>]+>", " ", raw.replace("</h1>", ". "))  # a title is a sentence
    elif name.endswith(".eml"):
        raw = raw.split("\n\n", 1)[1]  # the body after the headers
    return " ".join(raw.split())


@activity(name="doc_classify")
def classify(text: str) -> dict:
    words = set(re.findall(r"[a-z]+", text.lower()))
    hits = {label: len(words & keywords) for label, keywords in LABELS.items()}
    label = max(hits, key=hits.get)
    return {"label": label, "confidence": round(hits[label] / sum(hits.values()), 2)}


@activity(name="doc_summarize")
def summarize(text: str) -> str:
    return " ".join(re.split(r"(?<=[.!?])\s+", text)[:2])  # the first two sentences


@activity(name="doc_extract_entities")
def extract_entities(text: str) -> dict:
    return {"names": sorted(set(re.findall(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", text))),
            "emails": re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text),
            "dates": re.findall(r"\b\d{4}-\d{2}-\d{2}\b", text)}


@activity(name="doc_aggregate")
async def aggregate(name: str, classification: dict, summary: str, entities: dict) -> dict:
    return {"document": name, **classification, "summary": summary, **entities}


@workflow(name="ai_document_processor")
async def process_document(ctx: WorkflowContext) -> dict:
    name = ctx.get_input("document")
    text = await ctx.execute_activity(extract_text, name)
    classification, summary, entities = await ctx.execute_parallel(
        (classify, (text,), {}), (summarize, (text,), {}), (extract_entities, (text,), {}))
    return await ctx.execute_activity(aggregate, name, classification, summary, entities)


async def main() -> None:
    async with TinyWorkflowClient() as client:
        await client.start_worker()  # the three runs below execute side by side
        run_ids = [await client.start_workflow("ai_document_processor", {"document": name})
                   for name in DOCUMENTS]
        results = await asyncio.gather(
            *(client.wait_for_result(run_id, timeout=10) for run_id in run_ids))
        await client.stop_worker()

        print(f"{'DOCUMENT':<17} {'TYPE':<9} {'CONF':>4}  {'NAMES':<24} {'DATES':<23} EMAILS")
        for r in results:
            print(f"{r['document']:<17} {r['label']:<9} {r['confidence']:>4}  "
                  f"{', '.join(r['names']):<24} {', '.join(r['dates']):<23} "
                  f"{', '.join(r['emails'])}")
        for r in results:
            print(f"summary of {r['document']}: {r['summary']}")
        labels = [r["label"] for r in results]
        if labels != ["invoice", "support", "contract"]:
            raise SystemExit(f"unexpected classification: {labels}")


if __name__ == "__main__":
    asyncio.run(main())
