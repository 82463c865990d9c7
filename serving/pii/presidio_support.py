"""The guard's recognisers inside Microsoft Presidio (presidio-analyzer / presidio-anonymizer).

Presidio ships recognisers for several countries and none for Japan; this
module registers the project's Japanese recognisers (serving/pii/recognizers.py
and names.py) as Presidio `LocalRecognizer`s with `supported_language="ja"`,
under an `AnalyzerEngine` with Presidio's `NoOpNlpEngine` (the recognisers are
self-contained: Japanese has no spaces, so Presidio's token-based context
enhancement cannot work on it, and each recogniser applies its own context
words). Masking goes through presidio-anonymizer's `replace` operator.

`govllm pii scan --engine presidio` and tools/pii_quality.py use it to show
that both paths give identical findings; the router does not, because
importing presidio_analyzer loads spaCy, transformers and torch (seconds and
hundreds of MB per router replica) and the engine adds per-call overhead;
loadtest/bench_pii.py measures both (docs/pii.md).
"""

from __future__ import annotations

from functools import lru_cache

from presidio_analyzer import AnalyzerEngine, LocalRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from serving.config.pii_entities import LABELS
from serving.pii.detector import Finding, resolve_overlaps
from serving.pii.normalize import normalize
from serving.pii.recognizers import RECOGNIZERS, Recognizer

LANGUAGE = "ja"


class JapaneseRecognizer(LocalRecognizer):
    """One of the project's recognisers as a Presidio recogniser (normalises, maps offsets back)."""

    def __init__(self, recognizer: Recognizer):
        self._rec = recognizer
        super().__init__(supported_entities=[recognizer.entity], name=recognizer.name,
                         supported_language=LANGUAGE, country_code="jp")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        norm = normalize(text)
        results = []
        for start, end, score in self._rec.analyze(norm.text):
            s, e = norm.span(start, end)
            results.append(RecognizerResult(self._rec.entity, s, e, score, recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return results


class JapaneseNameRecognizer(LocalRecognizer):
    """serving/pii/names.py (SudachiPy) as a Presidio recogniser."""

    def __init__(self):
        from serving.pii.names import NameRecognizer

        self._rec = NameRecognizer()
        super().__init__(supported_entities=["PERSON"], name=self._rec.name,
                         supported_language=LANGUAGE, country_code="jp")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        norm = normalize(text)
        out = []
        for start, end, score in self._rec.analyze(norm.text):
            s, e = norm.span(start, end)
            out.append(RecognizerResult("PERSON", s, e, score, recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out


@lru_cache(maxsize=2)
def analyzer(names: bool = False) -> AnalyzerEngine:
    """An AnalyzerEngine for Japanese with only the project's recognisers."""
    recognizers = [JapaneseRecognizer(r) for r in RECOGNIZERS]
    if names:
        recognizers.append(JapaneseNameRecognizer())
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
    engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    engine.load()
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE])


def analyze(text: str, *, names: bool = False, min_score: float = 0.5) -> list[Finding]:
    """Findings through Presidio's AnalyzerEngine, overlaps resolved as the router does."""
    results = analyzer(names).analyze(text=text, language=LANGUAGE, score_threshold=min_score)
    return resolve_overlaps(
        Finding(r.start, r.end, r.entity_type, r.score,
                (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY, ""))
        for r in results if r.score >= min_score)


@lru_cache(maxsize=1)
def _anonymizer() -> AnonymizerEngine:
    return AnonymizerEngine()


def anonymize(text: str, findings: list[Finding]) -> str:
    """`text` with every finding replaced by its placeholder, by presidio-anonymizer."""
    results = [RecognizerResult(f.entity, f.start, f.end, f.score) for f in findings]
    operators = {entity: OperatorConfig("replace", {"new_value": f"[{label}]"})
                 for entity, label in LABELS.items()}
    return _anonymizer().anonymize(text=text, analyzer_results=results, operators=operators).text
