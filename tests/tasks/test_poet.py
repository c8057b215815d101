import dataclasses
import logging

import pytest
from mlflow import MlflowClient

from pgbench import tasks
from pgbench.config.verbs import resolve
from pgbench.errors import ConfigError
from pgbench.models.tiny import MICRO, tiny_policy_dir
from pgbench.tasks import Example
from pgbench.tasks.poet import (
    FORMS,
    Form,
    constraint_scores,
    poem_lines,
    tool_result,
)
from pgbench.train.trainer import train

COUPLET = FORMS["couplet"]  # AA, 4-8 syllables a line
QUATRAIN = FORMS["quatrain"]  # ABAB, 3-5 syllables a line
CALL = "<tool>rhymes(night)</tool>\n<result>right, write, tonight, might, quite</result>\n"
MICRO_POET_TASK = {"train_size": "300", "valid_size": "20", "test_size": "20"}
MICRO_POET_SPEC = dataclasses.replace(MICRO, max_length=128)
METRICS = {"score", "lines", "rhyme", "syllables", "theme", "distinct", "tool_calls"}


@pytest.fixture(scope="module")
def poet():
    return tasks.get("poet", **MICRO_POET_TASK)


def test_rhyme_pairs_link_each_line_to_the_first_line_of_its_letter():
    assert Form("AA", 1, 9).rhyme_pairs() == [(0, 1)]
    assert Form("ABAB", 1, 9).rhyme_pairs() == [(0, 2), (1, 3)]
    assert Form("AABBA", 1, 9).rhyme_pairs() == [(0, 1), (2, 3), (0, 4)]


# -- constraints and reward -----------------------------------------------------------------


def test_a_poem_satisfying_every_constraint_scores_one():
    # night / right rhyme; 5 and 4 syllables are in 4-8; "night" is used; two distinct lines
    completion = CALL + "I can't sleep at night\nYou are quite right"
    scores = constraint_scores(completion, "night", COUPLET)
    assert scores == {"lines": 1.0, "rhyme": 1.0, "syllables": 1.0, "theme": 1.0, "distinct": 1.0}


def test_partial_credit_per_constraint():
    # 3 lines for a couplet: lines 0. The first two are the same line: long/long is no rhyme
    # (0/1 pairs), both have 4 syllables (2/2), "night" is used (1), 1 distinct of 2 lines.
    completion = "The night is long\nthe night is long.\nAnd more"
    scores = constraint_scores(completion, "night", COUPLET)
    assert scores == {"lines": 0.0, "rhyme": 0.0, "syllables": 1.0, "theme": 1.0, "distinct": 0.5}


def test_missing_lines_fail_their_pairs_and_syllables():
    # 2 of 4 quatrain lines: pairs (0,2) and (1,3) both need a missing line -> 0/2;
    # 2 of 4 lines in 3-5 syllables -> 0.5; theme "day" used; 2 distinct / 4 -> 0.5
    completion = "Have a nice day\nWhat did they say"
    scores = constraint_scores(completion, "day", QUATRAIN)
    assert scores == {"lines": 0.0, "rhyme": 0.0, "syllables": 0.5, "theme": 1.0, "distinct": 0.5}


def test_quatrain_abab_and_syllable_bounds():
    # ends day/sea/say/me: (0,2) day-say, (1,3) sea-me rhyme; 4, 4, 4, 3 syllables in 3-5
    good = "Have a nice day\nI love the sea\nWhat did they say\nCome with me"
    assert min(constraint_scores(good, "day", QUATRAIN).values()) == 1.0
    # "Have a very nice day today" has 1+1+2+1+1+2 = 8 syllables > 5: 3 of 4 lines in range
    long = good.replace("Have a nice day", "Have a very nice day today")
    assert constraint_scores(long, "day", QUATRAIN)["syllables"] == 0.75
    # the theme must be a whole word of the poem, not part of one
    assert constraint_scores(good, "ay", QUATRAIN)["theme"] == 0.0


def test_empty_completion_scores_zero(poet):
    assert min(constraint_scores("", "night", COUPLET).values()) == 0.0
    assert poet.reward([""], [Example("couplet night", ("",))]) == [0.0]


def test_tool_calls_and_results_are_not_poem_lines():
    assert poem_lines(CALL + "I can't sleep at night\n\n  You are quite right  ") == [
        "I can't sleep at night",
        "You are quite right",
    ]


def test_reward_is_the_mean_constraint_score_and_metrics_are_pass_rates(poet):
    examples = [Example("couplet night", ("",))] * 2
    completions = [
        CALL + "I can't sleep at night\nYou are quite right",  # all five constraints: 1.0
        "The night is long\nthe night is long.\nAnd more",  # (0 + 0 + 1 + 1 + 0.5) / 5
    ]
    assert poet.reward(completions, examples) == [1.0, 0.5]
    assert poet.metrics(completions, examples) == {
        "score": 75.0,  # (1.0 + 0.5) / 2 x 100
        "lines": 50.0,
        "rhyme": 50.0,
        "syllables": 100.0,
        "theme": 100.0,
        "distinct": 50.0,
        "tool_calls": 0.5,  # one call in two episodes
    }


# -- the tool protocol ----------------------------------------------------------------------


def test_rhymes_lists_common_rhymes_most_frequent_first():
    assert tool_result("<tool>rhymes(night)</tool>") == (
        "\n<result>right, write, tonight, might, quite</result>\n"
    )
    assert tool_result("Some text <tool>rhymes(Night)</tool>") == tool_result(
        "<tool>rhymes(night)</tool>"
    )
    assert tool_result("<tool>rhymes(zzxq)</tool>") == "\n<result>none</result>\n"


def test_syllables_tool_counts_a_line():
    assert tool_result("<tool>syllables(the night is long)</tool>") == "\n<result>4</result>\n"


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<tool>rhymes(</tool>", "error: malformed call; tools: rhymes(word), syllables(line)"),
        ("rhymes(night)</tool>", "error: malformed call; tools: rhymes(word), syllables(line)"),
        (
            "<tool>fly(high)</tool>",
            "error: unknown tool fly; tools: rhymes(word), syllables(line)",
        ),
        ("<tool>rhymes(dark night)</tool>", "error: rhymes takes one word, e.g. rhymes(night)"),
        (
            "<tool>syllables(, ,)</tool>",
            "error: syllables takes a line of words, e.g. syllables(the night is long)",
        ),
        # the policy's text is never echoed back (it could spell special tokens)
        (
            "<tool>Fly<|end|>(x)</tool>",
            "error: malformed call; tools: rhymes(word), syllables(line)",
        ),
    ],
)
def test_malformed_and_unknown_calls_get_an_error_result(completion, answer):
    assert tool_result(completion) == f"\n<result>{answer}</result>\n"


def test_only_the_call_of_the_current_turn_is_answered():
    # the earlier, answered call is not answered again: this turn has no <tool>
    completion = CALL + "I can't sleep</tool>"
    assert tool_result(completion).startswith("\n<result>error: malformed call")
    completion = CALL + "Fine <tool>syllables(I can't sleep)</tool>"
    assert tool_result(completion) == "\n<result>3</result>\n"


def test_tool_env_of_the_task(poet):
    env = poet.tools()
    assert env.stop == "</tool>" and env.max_turns == 3
    assert env.call("<tool>rhymes(night)</tool>") == tool_result("<tool>rhymes(night)</tool>")


# -- prompts, splits, transcripts -----------------------------------------------------------


def test_splits_are_deterministic_and_held_out_pairs_are_never_trained_on(poet):
    splits = poet.splits()
    assert splits.sizes() == {"train": 300, "valid": 20, "test": 20}
    again = tasks.get("poet", train_size="300", valid_size="20", test_size="20").splits()
    assert again == splits
    other = tasks.get("poet", train_size="300", valid_size="20", test_size="20", split_seed="1")
    assert other.splits().test != splits.test
    held_out = {e.source for e in splits.valid + splits.test}
    assert len(held_out) == 40
    assert not held_out & {e.source for e in splits.train}
    assert {e.source.split()[0] for e in splits.train} == set(FORMS)


def test_bootstrap_transcripts_call_a_tool_and_satisfy_every_constraint(poet):
    examples = poet.splits().train[:50]
    targets = [poet.target(example) for example in examples]
    assert poet.reward(targets, examples) == [1.0] * 50
    for target, example in zip(targets, examples, strict=True):
        theme = example.source.split()[1]
        call = f"<tool>rhymes({theme})</tool>"
        assert target.startswith(call + tool_result(call))


def test_prompt_names_form_theme_and_tools(poet):
    messages = poet.messages(Example("quatrain day", ("",)))
    assert "<tool>rhymes(word)</tool>" in messages[0]["content"]
    assert messages[1]["content"] == (
        'Write a quatrain (rhyme scheme ABAB, 3-5 syllables a line) that uses the word "day".'
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"forms": "sonnet"}, "task.forms='sonnet' is not valid"),
        ({"forms": "couplet,couplet"}, "task.forms='couplet,couplet' is not valid"),
        ({"max_turns": "0"}, "task.max_turns must be >= 1"),
    ],
)
def test_bad_fields_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        tasks.get("poet", **fields)


def test_held_out_sizes_beyond_the_pairs_are_a_config_error():
    task = tasks.get("poet", forms="quatrain", valid_size="5000")
    with pytest.raises(ConfigError, match="task.valid_size \\+ task.test_size = 5200"):
        task.splits()


# -- end to end -----------------------------------------------------------------------------


def test_micro_rloo_run_logs_constraint_pass_rates_before_and_after(poet, tmp_path):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    policy = tiny_policy_dir(poet, tmp_path / "cache", MICRO_POET_SPEC, progress=False)
    overrides = {
        "task": "poet",
        "model": str(policy),
        **{f"task.{k}": v for k, v in MICRO_POET_TASK.items()},
        "trainer.steps": "3",
        "trainer.prompts_per_step": "4",
        "rollout.samples_per_prompt": "3",
        "rollout.max_new_tokens": "16",
        "eval.every": "2",
        "eval.max_new_tokens": "16",
        "output_dir": str(tmp_path / "run"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    summary = train(resolve(overrides))
    assert set(summary["eval_before"]) == set(summary["eval_after"]) == METRICS
    client = MlflowClient(overrides["tracking.uri"])
    test = client.get_metric_history(summary["run_id"], "test/score")
    assert [m.value for m in test] == [
        summary["eval_before"]["score"],
        summary["eval_after"]["score"],
    ]
    for name in METRICS - {"tool_calls"}:
        assert 0 <= summary["eval_after"][name] <= 100
    # rollout tokens count the policy's own: at most 16 per episode, 12 episodes a step
    assert 0 < summary["train"]["train/tokens"] <= 3 * 12 * 16
