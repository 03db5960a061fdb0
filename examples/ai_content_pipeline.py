"""An AI content pipeline: generate, analyse in parallel, moderate, translate, save.

    python examples/ai_content_pipeline.py

The usage guide's "ai_content_pipeline". The model calls are small deterministic stand-ins
(a template writer, a word-list sentiment, a blocklist moderator, a keyword counter and a
dictionary translator), so the example needs no network and no API key; swap in real
calls and nothing else changes. Model calls are slow and cost money: each one is a
recorded step, so a run that crashes or is retried after the translations does not pay
for the generation again. One prompt passes; the other is flagged by moderation and the
run stops before translating.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio
import collections
import hashlib
import re

from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, workflow

POSITIVE, NEGATIVE = {"reliable", "simple", "fast", "great"}, {"lose", "slow", "broken"}
BLOCKLIST = {"scam", "guaranteed"}
STOPWORDS = {"a", "an", "and", "are", "is", "it", "of", "the", "they", "to", "about", "never"}
ENGLISH = "durable workflows are reliable and simple never lose work".split()
DICTIONARY = {language: dict(zip(ENGLISH, translated.split())) for language, translated in {
    "es": "duraderos flujos son fiables y sencillos nunca pierden trabajo",
    "fr": "durables workflows sont fiables et simples jamais perdent travail",
    "de": "dauerhafte Workflows sind zuverlässig und einfach nie verlieren Arbeit",
}.items()}  # a very small "translation model": word by word


def words(text: str) -> list:
    return re.findall(r"[a-zà-ÿ]+", text.lower())


@activity(name="generate_content", retry_policy=RetryPolicy(max_retries=3, initial_delay=0.5))
async def generate_content(prompt: str) -> dict:
    text = f"Durable {prompt} are reliable and simple. Durable {prompt} never lose work."
    return {"content": text, "model": "template-1", "tokens": len(words(text))}


@activity(name="analyze_sentiment")
def analyze_sentiment(text: str) -> dict:
    score = sum((w in POSITIVE) - (w in NEGATIVE) for w in words(text))
    return {"label": "positive" if score > 0 else "negative" if score < 0 else "neutral",
            "score": score}


@activity(name="moderate_content")
def moderate_content(text: str) -> dict:
    hits = sorted(set(words(text)) & BLOCKLIST)
    return {"flagged": bool(hits), "terms": hits}


@activity(name="extract_keywords")
def extract_keywords(text: str) -> list:
    counts = collections.Counter(w for w in words(text) if w not in STOPWORDS)
    return [word for word, _ in counts.most_common(3)]


@activity(name="translate_text")
def translate(text: str, language: str) -> dict:
    def word(match: re.Match) -> str:  # word by word, keeping a capital initial
        found = DICTIONARY[language].get(match[0].lower(), match[0])
        return found[0].upper() + found[1:] if match[0][0].isupper() else found
    return {"language": language, "text": re.sub(r"[A-Za-z]+", word, text)}


@activity(name="save_results")
async def save_results(results: dict) -> dict:
    digest = hashlib.sha256(results["content"]["content"].encode()).hexdigest()[:12]
    return {"id": f"content-{digest}"}  # stand-in for a database or object store


@workflow(name="ai_content_pipeline")
async def ai_pipeline(ctx: WorkflowContext) -> dict:
    prompt = ctx.get_input("prompt")
    content = await ctx.execute_activity(generate_content, prompt)
    # Three analyses of the same text at once: three steps, recorded separately.
    sentiment, moderation, keywords = await ctx.execute_parallel(
        (analyze_sentiment, (content["content"],), {}),
        (moderate_content, (content["content"],), {}),
        (extract_keywords, (content["content"],), {}),
    )
    if moderation["flagged"]:
        return {"status": "rejected", "reason": "content_moderation",
                "terms": moderation["terms"]}
    translations = await ctx.execute_parallel(
        *[(translate, (content["content"], language), {}) for language in ("es", "fr", "de")])
    saved = await ctx.execute_activity(save_results, {
        "content": content, "sentiment": sentiment, "keywords": keywords,
        "translations": translations})
    return {"status": "completed", "content": content["content"], "id": saved["id"],
            "sentiment": sentiment["label"], "keywords": keywords,
            "translations": {t["language"]: t["text"] for t in translations}}


async def main() -> None:
    async with TinyWorkflowClient() as client:
        outcomes = {}
        for prompt in ("workflows", "guaranteed scam workflows"):
            run_id = await client.start_workflow("ai_content_pipeline", {"prompt": prompt},
                                                 wait=True)
            result = await client.wait_for_result(run_id, timeout=5)
            steps = await client.get_workflow_steps(run_id)
            outcomes[prompt] = (result["status"], len(steps))
            print(f"prompt {prompt!r}: {result['status']} after {len(steps)} steps "
                  f"({', '.join(s.name for s in steps)})")
            for key, value in result.items():
                if key == "translations":
                    for language, text in value.items():
                        print(f"    {language}: {text}")
                elif key != "status":
                    print(f"    {key}: {value}")
        if outcomes != {"workflows": ("completed", 8),
                        "guaranteed scam workflows": ("rejected", 4)}:
            raise SystemExit(f"unexpected outcomes: {outcomes}")


if __name__ == "__main__":
    asyncio.run(main())
