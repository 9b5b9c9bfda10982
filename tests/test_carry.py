"""experiments/carry.py: a run folder's state carried across machines (no TensorFlow)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import carry  # noqa: E402


def test_a_retraining_inside_a_sweep_is_carried_to_its_own_place_without_its_resume_state(tmp_path):
    """One finished retraining of a sweep (e.g. the 1-S a sweep's export needs) packs alone and
    unpacks under runs/<sweep>/runs/..., not under runs/<method>/... (the inner ``runs`` folder)."""
    run = tmp_path / "a" / "runs" / "sweep" / "runs" / "lottery_rewind" / "point_032" / "seed_7"
    (run / "backup").mkdir(parents=True)
    (run / "backup" / "state.h5").write_bytes(b"resume state")
    (run / "config.json").write_text(json.dumps({"model": "lenet300"}))
    (run / "result.json").write_text("{}")
    (run / "final.weights.h5").write_bytes(b"weights")
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n")
    assert carry._name_under_runs(str(run)) == "sweep/runs/lottery_rewind/point_032/seed_7"
    archive = carry.pack(str(run), out=str(tmp_path / "one.tar.xz"))
    fresh = tmp_path / "b" / "runs"
    fresh.mkdir(parents=True)
    message = carry.unpack(archive, str(fresh))
    restored = fresh / "sweep" / "runs" / "lottery_rewind" / "point_032" / "seed_7"
    assert "restored (2 epochs)" in message
    assert (restored / "final.weights.h5").read_bytes() == b"weights"
    assert not (restored / "backup").exists()
    assert "kept" in carry.unpack(archive, str(fresh))  # unpacking again leaves it


def test_an_imp_chain_is_carried_with_its_last_finished_round_s_weights_and_the_unfinished_round_s_state(tmp_path):
    """A chain cut halfway: every round's result and history travel, the weights only of the last
    finished round (the next round prunes from them), and the unfinished round's resume state."""
    chain = tmp_path / "a" / "runs" / "sweep" / "runs" / "imp" / "seed_2"
    chain.mkdir(parents=True)
    (chain / "chain.json").write_text(json.dumps({"rate": 0.2, "levels": [[1, None], [2, None], [3, 50.0]]}))
    for level in ("level_01", "level_02", "level_03"):
        (chain / level / "backup").mkdir(parents=True)
        (chain / level / "backup" / "state.h5").write_bytes(b"resume state " + level.encode())
        (chain / level / "config.json").write_text("{}")
        (chain / level / "history.csv").write_text("epoch,loss\n0,1.0\n")
    for level in ("level_01", "level_02"):
        (chain / level / "result.json").write_text(json.dumps({"round": level}))
        (chain / level / "final.weights.h5").write_bytes(b"weights " + level.encode())
    archive = carry.pack(str(chain), out=str(tmp_path / "chain.tar.xz"))
    assert carry.progress_text(str(chain)) == "2 finished rounds"
    fresh = tmp_path / "b" / "runs"
    fresh.mkdir(parents=True)
    assert carry.unpack(archive, str(fresh)).endswith("sweep/runs/imp/seed_2: restored (2 finished rounds); "
                                                      "rerun its command to resume")
    restored = fresh / "sweep" / "runs" / "imp" / "seed_2"
    assert json.loads((restored / "chain.json").read_text())["levels"][2] == [3, 50.0]
    assert [json.loads((restored / lv / "result.json").read_text()) for lv in ("level_01", "level_02")] == [
        {"round": "level_01"}, {"round": "level_02"}]
    assert not (restored / "level_01" / "final.weights.h5").exists()
    assert (restored / "level_02" / "final.weights.h5").read_bytes() == b"weights level_02"
    assert not (restored / "level_02" / "backup").exists()
    assert (restored / "level_03" / "backup" / "state.h5").read_bytes() == b"resume state level_03"
    assert "kept (2 finished rounds there, 2 in the archive)" in carry.unpack(archive, str(fresh))


def test_a_folder_outside_runs_is_named_by_itself(tmp_path):
    assert carry._name_under_runs(str(tmp_path / "lobster_x")) == "lobster_x"
    assert carry._name_under_runs(str(tmp_path / "runs" / "search_rules" / "seed0")) == "search_rules/seed0"


def test_a_committed_table_is_merged_into_the_sweep_s_own_without_losing_its_newer_rows(tmp_path):
    """A fresh machine (or a sweep that ran on past its last commit): the committed rows go into the
    sweep folder's results.csv by run key; rows only the local table has stay, none is doubled."""
    from kerasprune import results

    def row(method, seed, error):
        return {"method": method, "variant": "", "point": "5", "seed": str(seed), "test_error": error}

    committed = results.ResultsTable(str(tmp_path / "committed.csv"))
    for r in [row("lobster", 0, "0.0845"), row("lottery_rewind", 0, "0.0907"), row("lottery_rewind", 1, "0.0912")]:
        committed.append(r)
    local = results.ResultsTable(str(tmp_path / "sweep" / "results.csv"))
    local.append(row("lottery_rewind", 0, "0.0907"))
    local.append(row("random_reinit", 0, "0.0944"))  # finished after the last commit
    message = carry.restore_table(committed.path, str(tmp_path / "sweep"))
    assert message.endswith("2 of 3 committed rows added, 4 rows now")
    by_key = {results.key_of(r): r["test_error"] for r in local.rows()}
    assert by_key == {("lobster", "", "5", "0"): "0.0845", ("lottery_rewind", "", "5", "0"): "0.0907",
                      ("lottery_rewind", "", "5", "1"): "0.0912", ("random_reinit", "", "5", "0"): "0.0944"}
    assert "0 of 3 committed rows added" in carry.restore_table(committed.path, str(tmp_path / "sweep"))
    fresh = carry.restore_table(committed.path, str(tmp_path / "new_sweep"))  # no sweep folder yet
    assert fresh.endswith("3 of 3 committed rows added, 3 rows now")
    assert "nothing to restore" in carry.restore_table(str(tmp_path / "none.csv"), str(tmp_path / "sweep"))
