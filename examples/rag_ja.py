"""Retrieval-augmented answering over Japanese administrative text, through govllm only.

    python examples/rag_ja.py --question "住民票の写しはどこで申請できますか"

1. index: every paragraph is embedded once (`POST /v1/embeddings`, one batched call);
2. retrieve: the question is embedded and the paragraphs ranked by cosine similarity;
3. rerank: the best `--candidates` go to `POST /v1/rerank`, which orders them again;
4. answer: the top `--top` paragraphs, numbered, are the context of a chat request that
   must cite them as [1], [2]; the citations printed are the paragraphs' own ids.

The development models (`make serve`) have random weights, so the ranking and the answer
are noise, but every step is the production code path; point --base-url at a platform with
real models and the same script answers properly. Needs only the `openai` and `httpx`
packages (the SDK has no rerank call, so rerank is a plain HTTP request).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

#: A few paragraphs of the kind a municipality's RAG index holds (written for this example).
PARAGRAPHS: dict[str, str] = {
    "jumin-01": "住民票の写しの交付申請は、市役所の市民課窓口のほか、マイナンバーカードを利用して"
                "コンビニエンスストアのマルチコピー機でも行えます。",
    "bosai-02": "災害時の避難所の開設状況は、防災課が市のホームページと防災行政無線で随時お知らせします。",
    "hojo-03": "補助金の交付要綱を改正し、令和八年四月一日から申請期限を三十日から四十五日に延長します。",
    "zei-04": "固定資産税の納税通知書は毎年四月に発送します。口座振替の手続は税務課で受け付けています。",
    "dx-05": "行政手続のデジタル化により、転入届の事前申請をオンラインで行えるようになりました。",
    "ai-06": "生成AIを業務で利用する際は、機密性2情報を入力しないよう各課で徹底してください。",
}


@dataclass
class Hit:
    doc_id: str
    text: str
    similarity: float
    relevance: float | None = None


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


def answer(client: OpenAI, http: httpx.Client, question: str, *, embed_model: str, chat_model: str,
           candidates: int = 4, top: int = 2, max_tokens: int = 64) -> dict:
    """Index, retrieve, rerank and answer; returns what a caller would show or log."""
    ids = list(PARAGRAPHS)
    index = client.embeddings.create(model=embed_model, input=[PARAGRAPHS[i] for i in ids])
    query = client.embeddings.create(model=embed_model, input=question).data[0].embedding
    hits = sorted((Hit(i, PARAGRAPHS[i], _cosine(query, d.embedding)) for i, d in zip(ids, index.data, strict=True)),
                  key=lambda h: h.similarity, reverse=True)[:candidates]
    reranked = http.post("/v1/rerank", json={"model": embed_model, "query": question,
                                             "documents": [h.text for h in hits], "top_n": top})
    reranked.raise_for_status()
    chosen = []
    for result in reranked.json()["results"]:
        hit = hits[result["index"]]
        hit.relevance = result["relevance_score"]
        chosen.append(hit)
    context = "\n".join(f"[{n}] {h.text}" for n, h in enumerate(chosen, 1))
    reply = client.chat.completions.create(
        model=chat_model, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "system", "content": "次の資料だけを根拠に日本語で答え、根拠を [番号] で示してください。\n"
                                                + context},
                  {"role": "user", "content": question}])
    return {
        "question": question,
        "retrieved": [{"id": h.doc_id, "similarity": round(h.similarity, 4)} for h in hits],
        "reranked": [{"id": h.doc_id, "relevance": round(h.relevance or 0.0, 4)} for h in chosen],
        "answer": reply.choices[0].message.content,
        "citations": {f"[{n}]": h.doc_id for n, h in enumerate(chosen, 1)},
        "tokens": {"index": index.usage.prompt_tokens, "answer": reply.usage.total_tokens},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--question", default="住民票の写しはどこで申請できますか")
    parser.add_argument("--base-url", default=os.environ.get("GOVLLM_BASE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("GOVLLM_API_KEY"))
    parser.add_argument("--embed-model", default="tiny-embed-ja")
    parser.add_argument("--chat-model", default="default")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    key = args.api_key or Path(".govllm/dev-api-key").read_text().strip()
    client = OpenAI(base_url=args.base_url.rstrip("/") + "/v1", api_key=key)
    with httpx.Client(base_url=args.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        result = answer(client, http, args.question, embed_model=args.embed_model, chat_model=args.chat_model)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    print(f"質問: {result['question']}\n回答: {result['answer']}\n根拠:")
    for mark, doc_id in result["citations"].items():
        print(f"  {mark} {doc_id}: {PARAGRAPHS[doc_id]}")


if __name__ == "__main__":
    main()
