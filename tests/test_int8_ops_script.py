"""benchmarks/int8_ops.py: the table rows, and one tiny end-to-end run."""

import json

import pytest

from benchmarks import int8_ops


def _node(index, op, dtype, partition, ms):
    return {"index": index, "op": op, "dtype": dtype, "partition": partition, "ms": ms}


RESULT = {
    "model": "m", "size": 32, "threads": 2, "fp32_ms": 12.0, "int8_ms": 10.0,
    "int8": {"partitions": 2, "nodes": [
        _node(0, "CONV_2D", "int8", 9, 4.0), _node(1, "EQUAL", "bool", None, 1.0),
        _node(2, "EQUAL", "bool", None, 0.5), _node(3, "ARG_MAX", "int64", None, 2.0),
        _node(4, "TRANSPOSE_CONV", "int8", 9, 3.0)]},
    "fp32": {"partitions": 1, "nodes": [
        _node(0, "CONV_2D", "float32", 9, 6.0), _node(1, "EQUAL", "bool", None, 1.5),
        _node(3, "ARG_MAX", "int64", None, 2.0), _node(4, "TRANSPOSE_CONV", "float32", 9, 1.0)]},
}


def test_table_row_lists_the_undelegated_ops_by_share():
    row = int8_ops.table_row(RESULT)
    assert row[:5] == ["m", "12.0", "10.0", "1.20", "2"]
    assert row[5] == "35.0% in all: ARG_MAX int64 x1 20.0%, EQUAL bool x2 15.0%"
    assert int8_ops.table_row({"model": "m", "error": "exit code 1"})[-1] == "failed: exit code 1"


def test_detail_rows_compare_int8_nodes_with_their_fp32_twins():
    rows = int8_ops.detail_rows(RESULT)
    # TRANSPOSE_CONV: 3 ms in int8 against 1 ms in float32 = 20% of the int8 invocation;
    # CONV_2D is faster in int8 and EQUAL equal: neither is listed.
    assert rows == [["m", "TRANSPOSE_CONV int8", "1", "3.00", "1.00", "20.0%"]]
    assert int8_ops.detail_rows({k: v for k, v in RESULT.items() if k != "fp32"}) == []


@pytest.mark.slow
def test_tiny_run_writes_the_section_and_json(tmp_path):
    results, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    text = int8_ops.main(["--models=enet", "--tiny", "--size=32", "--rounds=1", "--iters=1", "--calibration=1",
                          f"--results={results}", f"--json={raw}"])
    assert "<!-- begin int8-ops -->" in results.read_text() and "| enet |" in text
    result = json.loads(raw.read_text())["results"][0]
    assert result["model"] == "enet" and result["fp32_ms"] > 0 and result["int8_ms"] > 0
    assert result["int8"]["partitions"] <= 3
    assert {n["op"] for n in result["int8"]["nodes"] if n["partition"] is None} <= {
        "EQUAL", "SELECT_V2", "ADD", "RESHAPE", "SCATTER_ND", "ARG_MAX", "CAST"}
