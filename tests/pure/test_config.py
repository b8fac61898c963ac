"""Configuration: the shipped files load; bad ones name the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modeld.core.config import load_config, parse_config
from modeld.core.errors import ConfigError
from modeld.core.gateway_keys import new_key
from modeld.core.naming import not_found
from modeld.daemon.checkconfig import schema

ROOT = Path(__file__).resolve().parents[2]
SEED = "etc/modeld/seed.toml"


def test_shipped_configs_load() -> None:
    """etc/modeld/seed.toml declares the seed's four models; demo.toml is simulated (the
    shipped modeld.toml is docs/recipes.md's: tests/pure/test_recipes.py)."""
    seed = load_config(ROOT / SEED)
    assert {name: m.size_gb for name, m in seed.models.items()} == {
        "gpt-oss-120b": 183,
        "gpt-oss-20b": 40,
        "deepseek-coder-33b-instruct": 43,
        "mistral-7b-v0.1": 7,
    }
    assert seed.models["gpt-oss-120b"].load_time_seconds == 61
    assert seed.models["gpt-oss-20b"].hf_path == "openai/gpt-oss-20b"
    demo = load_config(ROOT / "etc/modeld/demo.toml")
    assert demo.gpu.backend == "simulated"
    assert {m.runtime for m in demo.models.values()} == {"process"}


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[models.a]\nendpoint = "http://x"\nruntime = "process"\n', "models.a"),
        (
            '[models.a]\nendpoint = "ftp://x"\ncommand = ["x"]\nruntime = "process"\n',
            "models.a.endpoint",
        ),
        ('[models.a]\nendpoint = "http://x"\ncontainer = "c"\nsize_gb = -1\n', "models.a.size_gb"),
        ('[models.a]\nendpoint = "http://x"\ncontainer = "c"\nsizegb = 1\n', "models.a.sizegb"),
        (
            '[daemon]\neviction_policy = "random"\n[models.a]\nendpoint = "http://x"\n'
            'container = "c"\n',
            "daemon.eviction_policy",
        ),
        (
            '[gpu]\nbackend = "simulated"\ndevices_gb = [80]\n[models.a]\nendpoint = "http://x"\n'
            'container = "c"\ngpus = [1]\n',
            "models.a.gpus",
        ),
        (
            '[models.a]\nendpoint = "http://x"\ncontainer = "c"\ngpu_memory_gb = 3\n'
            "gpu_memory_utilization = 0.5\n",
            "models.a",
        ),
        (
            '[models.a]\nendpoint = "http://x"\ncontainer = "c"\napi_key_file = "/k"\n'
            'env = {VLLM_API_KEY = "other"}\n',
            "models.a",
        ),
        (
            '[models.a]\nendpoint = "http://x"\nruntime = "process"\napi_key_file = "/k"\n'
            'command = ["vllm", "serve", "--api-key=other"]\n',
            "models.a",
        ),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path: Path, toml: str, field: str) -> None:
    """Each mistake is reported with the file name and the offending field."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert field in caught.value.message


def test_daemon_exits_nonzero_on_bad_config(tmp_path: Path) -> None:
    """`modeld --config bad.toml` exits 78 (EX_CONFIG) with the file and field on stderr."""
    path = tmp_path / "bad.toml"
    path.write_text('[models.a]\nendpoint = "http://x"\ncontainer = "c"\nload_timeout_s = 0\n')
    result = subprocess.run(
        [sys.executable, "-m", "modeld", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert str(path) in result.stderr
    assert "models.a.load_timeout_s" in result.stderr


def test_daemon_says_clearly_when_nvml_cannot_load(tmp_path: Path) -> None:
    """On a host without the NVIDIA driver, the nvml backend fails at start with advice."""
    pytest.importorskip("pynvml")
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA driver")
    path = tmp_path / "nvml.toml"
    path.write_text(
        '[gpu]\nbackend = "nvml"\n[models.a]\nendpoint = "http://x"\n'
        'runtime = "process"\ncommand = ["x"]\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeld",
            "--config",
            str(path),
            "--socket",
            str(tmp_path / "s.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 69
    assert "NVML cannot load" in result.stderr
    assert 'backend = "simulated"' in result.stderr
    assert not (tmp_path / "s.sock").exists()


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`modeld check-config --config PATH`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "modeld", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_explains_the_seed_models(tmp_path: Path) -> None:
    """`modeld check-config` on the seed's config (its admin key file where a host would
    have it, here in a folder of the test's): valid, each of the four models with its
    runtime, need per device and source; exit 0; nothing started."""
    keys = tmp_path / "api-keys"
    keys.write_text(f"ops {new_key()}\n")
    config = tmp_path / "seed.toml"
    config.write_text((ROOT / SEED).read_text().replace("/etc/modeld/api-keys", str(keys)))
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("valid")
    models = [line for line in lines if line.startswith("model ")]
    assert len(models) == 4
    assert any("gpt-oss-20b: docker" in m and "34.0 GB [configured]" in m for m in models)
    assert any("90% of its total [utilization]" in m for m in models)


def test_check_config_fails_a_model_that_can_never_fit(tmp_path: Path) -> None:
    """A valid file whose model needs more than its GPU has, even alone: check-config
    explains it, names the model and the numbers, and exits 78 (the daemon would refuse
    it at start)."""
    path = tmp_path / "big.toml"
    path.write_text(
        '[gpu]\nbackend = "simulated"\ndevices_gb = [80]\n'
        '[models.small]\nruntime = "process"\ncommand = ["true"]\nendpoint = "http://x:1"\n'
        "gpu_memory_gb = 20\n"
        '[models.big]\nruntime = "process"\ncommand = ["true"]\nendpoint = "http://x:2"\n'
        "gpu_memory_gb = 90\n"
    )
    result = check_config(path)
    assert result.returncode == 78
    assert "model big:" in result.stdout and "does NOT fit even alone" in result.stdout
    assert "models.big: needs 90.0 GB on GPU 0, which has 80.0 GB" in result.stderr
    assert "models.small" not in result.stderr


def test_check_config_on_a_broken_file_names_file_and_field(tmp_path: Path) -> None:
    """A broken config: exit 78 with the file and the field."""
    path = tmp_path / "bad.toml"
    path.write_text('[models.a]\nendpoint = "http://x"\ncontainer = "c"\nsize_gb = -1\n')
    result = check_config(path)
    assert result.returncode == 78
    assert str(path) in result.stderr and "models.a.size_gb" in result.stderr


def test_the_committed_schema_matches_the_code() -> None:
    """docs/config.schema.json is what `modeld config-schema` prints today."""
    assert (ROOT / "docs" / "config.schema.json").read_text() == schema()


def test_check_config_names_a_backend_key_file_it_cannot_read(tmp_path: Path) -> None:
    """A model's `api_key_file` shows beside the model; one that cannot be read here is
    a warning naming the field (the daemon would fail that model's loads)."""
    key = tmp_path / "present.key"
    key.write_text("backend-secret-1\n")
    models = (
        f'[models.a]\nendpoint = "http://x"\ncontainer = "c"\napi_key_file = "{key}"\n'
        "gpu_memory_gb = 10\n"
        f'[models.b]\nendpoint = "http://y"\ncontainer = "d"\ngpu_memory_gb = 10\n'
        f'api_key_file = "{tmp_path / "absent.key"}"\n'
    )
    config = tmp_path / "modeld.toml"
    config.write_text(models)
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert f"backend key in {key}" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: models.b.api_key_file: cannot read {tmp_path / 'absent.key'}: "
        "No such file or directory"
    ]


def test_a_model_without_an_endpoint_gets_a_unix_socket_modeld_chooses() -> None:
    """No `endpoint`: the backend listens on NAME.sock in the backends' directory beside
    the daemon's socket (or backend_socket_dir), and `{socket}` in its command says where;
    a name with a slash makes a flat file name."""
    config = parse_config(
        {
            "daemon": {"socket": "/run/x/modeld.sock"},
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {
                "org/chat": {
                    "runtime": "process",
                    "command": ["vllm", "serve", "--uds", "{socket}"],
                }
            },
        }
    )
    model = config.models["org/chat"]
    assert model.endpoint == "unix:/run/x/backends/org_chat.sock"
    assert model.command == ["vllm", "serve", "--uds", "/run/x/backends/org_chat.sock"]
    moved = parse_config(
        {
            "daemon": {"backend_socket_dir": "/srv/sockets"},
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {"m": {"runtime": "process", "command": ["x"]}},
        }
    )
    assert moved.models["m"].endpoint == "unix:/srv/sockets/m.sock"


def test_port_and_host_come_from_the_endpoint_given() -> None:
    """`{port}` and `{host}` are written once, in the endpoint; a `{port}` with a socket
    endpoint is a config error naming the model."""
    config = parse_config(
        {
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {
                "m": {
                    "runtime": "process",
                    "command": ["vllm", "serve", "--host", "{host}", "--port", "{port}"],
                    "endpoint": "http://127.0.0.1:8011",
                }
            },
        }
    )
    assert config.models["m"].command == ["vllm", "serve", "--host", "127.0.0.1", "--port", "8011"]
    with pytest.raises(ConfigError, match=r"models\.m: .*command uses \{port\}"):
        parse_config(
            {
                "gpu": {"backend": "simulated", "devices_gb": [80]},
                "models": {"m": {"runtime": "process", "command": ["vllm", "--port", "{port}"]}},
            }
        )
    # An endpoint without its scheme is refused for what it is, not for `{host}`.
    with pytest.raises(ConfigError, match=r"models\.m\.endpoint: .*must be an http:// or https://"):
        parse_config(
            {
                "gpu": {"backend": "simulated", "devices_gb": [80]},
                "models": {
                    "m": {
                        "runtime": "process",
                        "command": ["vllm", "--host", "{host}", "--port", "{port}"],
                        "endpoint": "127.0.0.1:8011",
                    }
                },
            }
        )


@pytest.mark.parametrize(
    ("command", "configured", "served"),
    [
        (
            ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "qwen"],
            None,
            "qwen",
        ),
        (
            ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--port", "{port}"],
            None,
            "Qwen/Qwen2.5-7B-Instruct",
        ),
        (["--model", "openai/gpt-oss-20b", "--port", "{port}"], None, "openai/gpt-oss-20b"),
        (["--model=org/m", "--served-model-name=short"], None, "short"),
        (["python", "-m", "server", "--port", "{port}"], None, "m"),
        (["vllm", "serve", "org/m"], "chosen", "chosen"),
    ],
)
def test_the_served_name_is_what_the_command_tells_vllm(
    command: list[str], configured: str | None, served: str
) -> None:
    """The gateway renames requests to the name vLLM serves: `served_model_name` when
    set, else the command's --served-model-name, else its model (vLLM's default), else
    the table's key."""
    config = parse_config(
        {
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {
                "m": {
                    "runtime": "process",
                    "command": command,
                    "endpoint": "http://127.0.0.1:8011",
                    **({"served_model_name": configured} if configured else {}),
                }
            },
        }
    )
    assert config.models["m"].served_name == served


def test_config_errors_say_where_and_what_was_meant(tmp_path: Path) -> None:
    """An error names the line and column of the key in the file; a misspelt key gets
    the nearest key its table takes; an error about a missing key points at its table."""
    config = tmp_path / "modeld.toml"
    config.write_text(
        "[daemon]\n"
        'socket = "/tmp/x.sock"\n'
        "\n"
        "[gateway]\n"
        'api_key_file = "/etc/modeld/api-keys"\n'
        "\n"
        '[models."chat"]\n'
        'runtime = "process"\n'
        'command = ["vllm"]\n'
        'endpoint = "http://127.0.0.1:8001"\n'
        "  sizegb = 7\n"
        "\n"
        "[models.coder]\n"
        'runtime = "process"\n'
        "\n"
        "[models.big]\n"
        'runtime = "process"\n'
        'command = ["vllm"]\n'
        'endpoint = "http://127.0.0.1:8002"\n'
        "size_gb = -1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = caught.value.message
    assert "gateway.api_key_file (line 5, column 1): " in message
    assert "did you mean api_keys_file?" in message
    assert "models.chat.sizegb (line 11, column 3): " in message
    assert "did you mean size_gb?" in message
    assert "models.big.size_gb (line 20, column 1): " in message
    # coder has no command: said at its table's header.
    assert "models.coder (line 13, column 1): " in message
    assert caught.value.data["fields"][:2] == ["gateway.api_key_file", "models.chat.sizegb"]


def test_check_config_fails_what_would_fail_once_run(tmp_path: Path) -> None:
    """check-config passes nothing that then fails: a gateway key file that is missing,
    empty or holds a key cut short (the gateway would not start), a process command
    whose program is not there (its start would fail): each named, exit 78. A model
    with no memory figure at all is a warning saying what modeld will assume."""
    empty = tmp_path / "keys"
    empty.write_text("# none yet\n")
    short = tmp_path / "short-keys"
    short.write_text("alice sk-alice-b\n")
    cases = {
        f'api_keys_file = "{tmp_path / "absent"}"': f"cannot read {tmp_path / 'absent'}",
        f'api_keys_file = "{empty}"': f"{empty} holds no key",
        f'inference_keys_file = "{short}"': "is shorter than 24 characters",
    }
    for gateway, said in cases.items():
        config = tmp_path / "modeld.toml"
        config.write_text(
            f"[gateway]\n{gateway}\n"
            '[models.a]\nruntime = "process"\ncommand = ["no-such-program-here", "serve"]\n'
            'endpoint = "http://127.0.0.1:9"\n'
            '[models.b]\nruntime = "process"\ncommand = ["true"]\n'
            'endpoint = "http://127.0.0.1:8"\ngpu_memory_gb = 10\n'
        )
        result = check_config(config)
        assert result.returncode == 78, gateway
        assert said in result.stderr, result.stderr
        assert "models.a.command: 'no-such-program-here' is not found on PATH" in result.stderr
        assert "models.b" not in result.stderr
        assert (
            "warning: models.a: no memory figure (gpu_memory_gb, gpu_memory_utilization or "
            "size_gb): modeld assumes it needs 0.0 GB" in result.stdout
        )
        assert "warning: models.b" not in result.stdout


def test_an_unknown_name_is_answered_in_a_sentence_with_a_guess() -> None:
    """An unknown name: the closest configured name or alias, then the models with their
    aliases, as a sentence (not a Python list); a caller's long name is cut."""
    aliases = {"c": "chat", "sql": "chat-sql"}
    names = ["chat", "chat-sql", "coder", "c", "sql"]
    assert not_found("chta", names, aliases) == (
        "Model 'chta' not found. Did you mean chat? The models: chat (also c), "
        "chat-sql (also sql) and coder."
    )
    assert not_found("zzz", ["only"], {}) == "Model 'zzz' not found. The models: only."
    assert not_found("x" * 1000, [], {}).startswith("Model '" + "x" * 64 + "…' not found.")
