"""The first task's param check: the DAG's own schemas, values as the trigger form sends them."""

from __future__ import annotations

import pytest

from include.run_params import ParamsError, check_params


@pytest.fixture(scope="module")
def schemas(pipeline_dag) -> dict[str, dict]:
    return {name: pipeline_dag.params.get_param(name).schema for name in pipeline_dag.params}


def test_defaults_and_form_values_pass(pipeline_dag, schemas):
    defaults = {name: pipeline_dag.params[name] for name in pipeline_dag.params}
    check_params(defaults, schemas)
    check_params({**defaults, "snapshot": None, "embeddings_root": None, "codebook_size": 16}, schemas)
    check_params({**defaults, "snapshot": "2026-11-20", "embeddings_root": "movielens"}, schemas)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"codebook_size": 0}, "codebook_size (Codebook size)=0: 0 is less than the minimum of 2"),
        ({"num_codebooks": 9}, "num_codebooks (Codebook levels)=9: 9 is greater than the maximum of 8"),
        ({"snapshot": "2026-1-2"}, "snapshot (Snapshot)='2026-1-2': '2026-1-2' does not match"),
        ({"epochs": "five"}, "epochs (Epochs)='five': 'five' is not of type 'integer'"),
    ],
)
def test_bad_values_are_named_with_their_rule(pipeline_dag, schemas, bad, message):
    values = {**{name: pipeline_dag.params[name] for name in pipeline_dag.params}, **bad}
    with pytest.raises(ParamsError, match="invalid params") as err:
        check_params(values, schemas)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError), "ValueErrors fail the task without retries (the DAG's policy)"


def test_every_bad_param_is_listed_at_once(pipeline_dag, schemas):
    values = {name: pipeline_dag.params[name] for name in pipeline_dag.params}
    with pytest.raises(ParamsError) as err:
        check_params({**values, "codebook_size": 1, "min_usage": 2}, schemas)
    assert "codebook_size" in str(err.value) and "min_usage" in str(err.value)
