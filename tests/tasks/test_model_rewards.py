import sys
import types

import pytest

from pgbench import tasks
from pgbench.errors import ConfigError
from pgbench.tasks import model_rewards
from pgbench.tasks.model_rewards import ModelRewards
from pgbench.tasks.rewards import sentence_chrf

COME_IN = tasks.Example("Entre.", ("Come in.", "Come on in."))
CAT = tasks.Example("Le chat est noir.", ("The cat is black.",))


def test_embed_scores_identity_relatedness_and_best_reference():
    rewards = ModelRewards(device="cpu")
    same, related, unrelated = rewards.embed(
        ["The cat is black.", "The black cat.", "I like cheese."], [CAT.references] * 3
    )
    assert same == pytest.approx(1.0, abs=1e-5)
    assert unrelated < related < same
    assert unrelated < 0.3 < 0.7 < related  # MiniLM: ~0.1 and ~0.9 for these sentences
    # the best reference counts: "Come on in." matches the 2nd reference exactly
    (best,) = rewards.embed(["Come on in."], [("I like cheese.", "Come on in.")])
    (first_only,) = rewards.embed(["Come on in."], [("I like cheese.",)])
    assert best == pytest.approx(1.0, abs=1e-5) and first_only < 0.5
    # several examples with different numbers of references, scored in one batch
    assert rewards.embed(["Come on in.", "I like cheese."], [COME_IN.references, ("Cheese",)]) == (
        pytest.approx(
            [max(rewards.embed(["Come on in."], [(r,)])[0] for r in COME_IN.references)]
            + rewards.embed(["I like cheese."], [("Cheese",)]),
            abs=1e-5,
        )
    )


def test_embed_model_is_loaded_once_per_model_and_device():
    rewards = ModelRewards(device="cpu")
    assert rewards.embedder() is ModelRewards(device="cpu", batch_size=3).embedder()


class FakeComet:
    """Stands in for a COMET model: records what `predict` gets, returns fixed scores."""

    def __init__(self, with_references: bool, scores: list[float]) -> None:
        self.with_references = with_references
        self.scores = scores
        self.calls: list[dict] = []

    def requires_references(self) -> bool:
        return self.with_references

    def predict(self, samples, batch_size, gpus, **kwargs):
        self.calls.append({"samples": samples, "batch_size": batch_size, "gpus": gpus})
        return types.SimpleNamespace(scores=self.scores, system_score=0.0)


def use_fake_comet(monkeypatch, fake: FakeComet) -> list[str]:
    loaded: list[str] = []

    def load(model: str) -> FakeComet:
        loaded.append(model)
        return fake

    monkeypatch.setattr(model_rewards, "load_comet", load)
    return loaded


def test_reference_based_comet_scores_every_reference_and_keeps_the_best(monkeypatch):
    fake = FakeComet(with_references=True, scores=[0.2, 0.9, 0.5])
    loaded = use_fake_comet(monkeypatch, fake)
    task = tasks.get("fr_en", reward="comet")
    task.configure_reward("", "cpu", 16)
    assert task.reward(["Come in! ", "The cat."], [COME_IN, CAT]) == [0.9, 0.5]
    assert loaded == ["Unbabel/wmt22-comet-da"]
    assert fake.calls == [
        {
            "samples": [
                {"src": "Entre.", "mt": "Come in!", "ref": "Come in."},
                {"src": "Entre.", "mt": "Come in!", "ref": "Come on in."},
                {"src": "Le chat est noir.", "mt": "The cat.", "ref": "The cat is black."},
            ],
            "batch_size": 16,
            "gpus": 0,
        }
    ]
    # held-out metrics report comet x 100 (mean of 0.9 and 0.5) beside chrf, bleu and embed
    metrics = task.metrics(["Come in! ", "The cat."], [COME_IN, CAT])
    assert set(metrics) == {"chrf", "bleu", "embed", "comet"}
    assert metrics["comet"] == pytest.approx(70.0)


def test_reference_free_comet_gets_source_and_translation_only(monkeypatch):
    fake = FakeComet(with_references=False, scores=[0.25, 0.75])
    loaded = use_fake_comet(monkeypatch, fake)
    task = tasks.get("fr_en", reward="chrf+2*comet")
    task.configure_reward("Unbabel/wmt22-cometkiwi-da", "cpu", 8)
    rewards = task.reward(["Come in.", "The cat."], [COME_IN, CAT])
    assert loaded == ["Unbabel/wmt22-cometkiwi-da"]
    assert fake.calls[0]["samples"] == [
        {"src": "Entre.", "mt": "Come in."},
        {"src": "Le chat est noir.", "mt": "The cat."},
    ]
    assert rewards == pytest.approx(
        [1.0 + 2 * 0.25, sentence_chrf("The cat.", CAT.references) + 2 * 0.75]
    )


@pytest.fixture
def fresh_comet_cache():
    model_rewards.load_comet.cache_clear()
    yield
    model_rewards.load_comet.cache_clear()


def test_check_reward_without_comet_installed_says_what_to_install(monkeypatch, fresh_comet_cache):
    monkeypatch.setitem(sys.modules, "comet", None)  # makes `import comet` fail
    task = tasks.get("fr_en", reward="chrf+comet")
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[comet\]"'):
        task.check_reward()
    tasks.get("fr_en", reward="chrf+embed").check_reward()  # no comet needed: loads fine


def test_check_reward_with_an_unloadable_checkpoint_says_what_to_download(
    monkeypatch, fresh_comet_cache
):
    def offline(name):
        raise ConnectionError("no network")

    fake = types.ModuleType("comet")
    fake.download_model = offline
    monkeypatch.setitem(sys.modules, "comet", fake)
    task = tasks.get("fr_en", reward="comet")
    with pytest.raises(ConfigError) as info:
        task.check_reward()
    message = str(info.value)
    assert "Unbabel/wmt22-comet-da" in message and "ConnectionError: no network" in message
    assert "comet.download_model('Unbabel/wmt22-comet-da')" in message and "\n" not in message


def test_an_embed_model_that_cannot_load_is_a_config_error(tmp_path):
    task = tasks.get("fr_en", reward="embed")
    task.configure_reward(str(tmp_path), "cpu", 8)  # an empty folder is no model
    with pytest.raises(ConfigError, match="cannot be loaded as a sentence-transformers model"):
        task.check_reward()
