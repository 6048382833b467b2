"""Node identity, signed records and the [fleet] config: the checks a gateway runs on every record,
and the errors an operator sees, without servers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ember.config import Settings
from ember.errors import ConfigError
from ember.fleet.config import load_fleet_config
from ember.fleet.identity import NodeIdentity, fingerprint, load_or_create
from ember.fleet.record import NodeRecord, Refused, Sequencer, join_proof, proves_token, verify
from ember.fleet.types import NodeLoad

NOW = 1_800_000_000.0


def record_of(identity: NodeIdentity, **fields: object) -> NodeRecord:
    base: dict[str, object] = {
        "node_id": identity.node_id,
        "public_key": identity.public_key,
        "name": "n1",
        "base_url": "http://127.0.0.1:9",
        "labels": {"tier": "edge"},
        "resident": ("smollm2:135m",),
        "stored": ("gemma3:270m", "smollm2:135m"),
        "load": NodeLoad(slots=4, busy=1, queue=0, tokens_per_s=12.5),
        "seq": 5,
        "ts": NOW,
        "ttl": 10.0,
    }
    return NodeRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_identity_is_made_once_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    key = tmp_path / "fleet" / "node.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert (tmp_path / "fleet" / "node.pub").read_text().strip() == first.public_key_b64
    assert first.node_id == fingerprint(first.public_key) and len(first.node_id) == 64
    assert load_or_create(tmp_path).node_id == first.node_id  # read back, not replaced
    key.write_text("not a key")
    with pytest.raises(ConfigError, match="not a readable node key"):
        load_or_create(tmp_path)


def test_a_signed_record_verifies_and_reads_back() -> None:
    identity = NodeIdentity.generate()
    record = record_of(identity)
    got = verify(record.signed(identity), now=NOW + 1)
    assert isinstance(got, NodeRecord)
    assert got == record
    info = got.info()
    assert info.verified and info.serves("gemma3:270m") and "smollm2:135m" in info.resident


def test_forged_unsigned_stale_and_replayed_records_are_refused() -> None:
    owner, forger = NodeIdentity.generate(), NodeIdentity.generate()
    # The owner's key and id, signed by someone else.
    forged = record_of(owner).signed(forger)
    assert "bad signature" in _reason(verify(forged, now=NOW))
    # The forger's own key, claiming the owner's id.
    claimed = record_of(forger, node_id=owner.node_id).signed(forger)
    assert "fingerprint" in _reason(verify(claimed, now=NOW))
    # Changed after signing.
    envelope = json.loads(record_of(owner).signed(owner))
    envelope["record"]["base_url"] = "http://127.0.0.1:666"
    assert "bad signature" in _reason(verify(json.dumps(envelope), now=NOW))
    del envelope["signature"]
    assert _reason(verify(json.dumps(envelope), now=NOW)) == "unsigned"
    assert _reason(verify(b"{not json", now=NOW)) == "not JSON"
    signed = record_of(owner).signed(owner)
    stale = verify(signed, now=NOW + 11)
    assert isinstance(stale, Refused) and stale.expired
    assert "future" in _reason(verify(signed, now=NOW - 60))
    assert "older" in _reason(verify(signed, now=NOW, last_seq=6))
    assert isinstance(verify(signed, now=NOW, last_seq=5), NodeRecord)  # the same record, read again


def test_join_proof_binds_the_token_to_the_key() -> None:
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    proof = join_proof("s3cret", a.public_key)
    assert proves_token(proof, "s3cret", a.public_key)
    assert not proves_token(proof, "s3cret", b.public_key)
    assert not proves_token(proof, "other", a.public_key)
    assert not proves_token(None, "s3cret", a.public_key)


def test_sequence_numbers_never_go_back() -> None:
    seq = Sequencer()
    first = seq.next(NOW)
    assert seq.next(NOW - 100) > first  # the clock stepped back
    assert seq.next(NOW) > first


def _reason(outcome: object) -> str:
    assert isinstance(outcome, Refused), outcome
    return outcome.reason


def _config(tmp_path: Path, text: str, **env: str) -> Settings:
    path = tmp_path / "ember.toml"
    path.write_text(text)
    return Settings(config=path, **env)  # type: ignore[arg-type]


def test_fleet_config_reads_the_table_and_settings_override_it(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    settings = _config(
        tmp_path,
        f"""
[fleet]
join = "redis://127.0.0.1:1/0"
allowlist = ["{identity.public_key_b64}", "{"AB" * 32}"]
labels = {{ tier = "edge" }}
ttl = 6

[[fleet.nodes]]
name = "vllm-a"
kind = "vllm"
base_url = "http://127.0.0.1:8000/v1/"
""",
        fleet_ttl=3.0,
    )
    config = load_fleet_config(settings)
    assert config.allowlist == [identity.node_id, "ab" * 32]  # keys become ids
    assert config.ttl == 3.0 and config.heartbeat_s == 1.0
    assert config.nodes[0].base_url == "http://127.0.0.1:8000"
    assert config.announces and config.reads_registry and config.active
    assert not load_fleet_config(Settings(config=None)).active


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[fleet]\njoin = "http://x"\n', 2, "fleet.join: join must be a Redis URL"),
        ('[fleet]\nttl = 5\nheartbeat = 9\n', 1, "heartbeat (9 s) must be shorter than ttl"),
        ('[fleet]\nallowlist = ["nope"]\n', 2, "neither a node id"),
        ('[fleet]\nttl = 5\n\n[[fleet.nodes]]\nname = "a"\nkind = "tgi"\nbase_url = "http://h"\n', 6, "kind"),
        ('[fleet]\ncolour = "red"\n', 2, "fleet.colour: Extra inputs are not permitted"),
    ],
)
def test_fleet_config_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    settings = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_fleet_config(settings)
    assert caught.value.message.startswith(f"{settings.config}:{line}: ")
    assert words in caught.value.message


def test_a_bad_setting_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^--join or EMBER_FLEET_JOIN: fleet.join: join must be a Redis URL"):
        load_fleet_config(Settings(fleet_join="http://nope"))  # type: ignore[call-arg]


def test_ember_fleet_id_prints_the_id_a_gateway_allowlists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ember.cli.main import main

    monkeypatch.setenv("EMBER_HOME", str(tmp_path))
    monkeypatch.delenv("EMBER_CONFIG", raising=False)
    main(["fleet", "id"])
    identity = load_or_create(tmp_path)  # the key the command made, read back
    assert capsys.readouterr().out.split() == ["node", "id", identity.node_id, "public", "key", identity.public_key_b64]
