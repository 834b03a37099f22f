"""The Modal app's deploy-time settings: read without failing an import, refused by `modal deploy` when broken."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpu.modal.deploy_settings import DeployRefusedError, read, refuse_a_broken_deploy

GOOD = {"LORA_ALLOWED_HOSTS": "acct.r2.cloudflarestorage.com", "MODAL_MIN_CONTAINERS": "1", "MODAL_MAX_CONTAINERS": "4"}
DEPLOY_ARGV = ["/usr/local/bin/modal", "deploy", "gpu/modal/app.py"]


def test_good_settings_have_no_problem_and_deploy() -> None:
    settings = read({**GOOD, "MODAL_GPU": "H200"})
    assert (settings.gpu, settings.min_containers, settings.max_containers, settings.problems) == ("H200", 1, 4, ())
    refuse_a_broken_deploy(settings, DEPLOY_ARGV)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"LORA_ALLOWED_HOSTS": " , "}, "LORA_ALLOWED_HOSTS is empty"),
        ({"MODAL_MIN_CONTAINERS": "-1"}, "MODAL_MIN_CONTAINERS"),
        ({"MODAL_MAX_CONTAINERS": "ten"}, "MODAL_MAX_CONTAINERS"),
        ({"MODAL_MIN_CONTAINERS": "5", "MODAL_MAX_CONTAINERS": "2"}, "below MODAL_MIN_CONTAINERS"),
        ({"MODAL_WORKER_COMPILE": "auto"}, "MODAL_WORKER_COMPILE must be on or off"),
        ({"MODAL_WARMUP_SIZES": "1024x1000x"}, "MODAL_WARMUP_SIZES: '1024x1000x' is not WIDTHxHEIGHT"),
        ({"MODAL_WARMUP_SIZES": "1024x1020"}, "MODAL_WARMUP_SIZES: '1024x1020': sides are multiples of 8"),
        ({"MODAL_WORKER_VAE_HALF": "half"}, "MODAL_WORKER_VAE_HALF must be on, auto or off, not 'half'"),
    ],
)
def test_a_broken_setting_is_refused_by_a_deploy_and_by_nothing_else(change: dict[str, str], named: str) -> None:
    settings = read({**GOOD, **change})
    with pytest.raises(DeployRefusedError, match=named):
        refuse_a_broken_deploy(settings, DEPLOY_ARGV)
    refuse_a_broken_deploy(settings, ["pytest"])  # a test, a container, the web endpoints: no refusal
    refuse_a_broken_deploy(settings, ["/usr/local/bin/modal", "serve", "gpu/modal/app.py"])


def test_compile_is_off_and_1024_warmed_unless_asked() -> None:
    settings = read(GOOD)
    assert (settings.worker_compile, settings.warmup_sizes) == ("off", "1024x1024")
    asked = read({**GOOD, "MODAL_WORKER_COMPILE": "ON", "MODAL_WARMUP_SIZES": "1024x1024,832x1216"})
    assert (asked.worker_compile, asked.warmup_sizes, asked.problems) == ("on", "1024x1024,832x1216", ())
    assert read({**GOOD, "MODAL_WARMUP_SIZES": ""}).warmup_sizes == ""  # no warm-up at all


def test_the_vae_decodes_in_half_first_for_the_fp16_fix_vae_unless_asked() -> None:
    # `on`, not `auto`: the fp16-fix VAE's half decode must not depend on its config naming `force_upcast: false`.
    assert read(GOOD).worker_vae_half == "on"
    assert read({**GOOD, "MODAL_WORKER_VAE_HALF": " Auto "}).worker_vae_half == "auto"  # SDXL's own VAE
    assert read({**GOOD, "MODAL_WORKER_VAE_HALF": "half"}).worker_vae_half == "on"  # refused by a deploy, above


def test_the_app_imports_whatever_the_environment_says() -> None:
    env = {"PATH": "/usr/bin:/bin", "MODAL_MIN_CONTAINERS": "many", "LORA_ALLOWED_HOSTS": ""}
    done = subprocess.run(
        [sys.executable, "-c", "import gpu.modal.app as m; print(len(m.DEPLOY.problems))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "2"
