"""`python -m sft_operator`'s settings: flags, their environment defaults, and service links."""

import pytest

from sft_operator.__main__ import ENV_SETTINGS, SERVICE_LINK_VARIABLE, parse_args

# What a real kubelet injects for the chart's Service `kube-sft-metrics` (port 8080, named metrics).
SERVICE_LINKS = {
    "KUBE_SFT_METRICS_SERVICE_HOST": "10.0.0.41",
    "KUBE_SFT_METRICS_SERVICE_PORT": "8080",
    "KUBE_SFT_METRICS_SERVICE_PORT_METRICS": "8080",
    "KUBE_SFT_METRICS_PORT": "tcp://10.0.0.41:8080",
    "KUBE_SFT_METRICS_PORT_8080_TCP": "tcp://10.0.0.41:8080",
    "KUBE_SFT_METRICS_PORT_8080_TCP_PROTO": "tcp",
    "KUBE_SFT_METRICS_PORT_8080_TCP_PORT": "8080",
    "KUBE_SFT_METRICS_PORT_8080_TCP_ADDR": "10.0.0.41",
}


def test_the_pattern_matches_every_service_link_variable() -> None:
    assert all(SERVICE_LINK_VARIABLE.match(name) for name in SERVICE_LINKS)


@pytest.mark.parametrize("setting", ENV_SETTINGS, ids=lambda s: s.variable)
def test_no_setting_can_be_a_service_link(setting: object) -> None:
    assert not SERVICE_LINK_VARIABLE.match(setting.variable)  # type: ignore[attr-defined]


def test_service_links_of_any_service_leave_the_settings_alone() -> None:
    args = parse_args([], {**SERVICE_LINKS, "KUBE_SFT_LIVENESS_PORT": "tcp://10.0.0.42:8081"})
    assert (args.metrics_port, args.liveness_port) == (8080, 8081)


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    environ = {"KUBE_SFT_METRICS_PORT_NUMBER": "9100", "KUBE_SFT_WORKERS": "4"}
    args = parse_args(["--metrics-port", "9200"], environ)
    assert (args.metrics_port, args.workers, args.resync_seconds) == (9200, 4, 5.0)


def test_a_flag_given_never_parses_its_variable() -> None:
    args = parse_args(["--workers", "3"], {"KUBE_SFT_WORKERS": "many"})
    assert args.workers == 3


def test_a_bad_variable_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([], {"KUBE_SFT_RESYNC_SECONDS": "soon"})
    assert "KUBE_SFT_RESYNC_SECONDS='soon' is not a valid float" in capsys.readouterr().err
