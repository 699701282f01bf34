"""The Kubernetes door: kubectl's connection flags reach the client, errors are classified."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod

from kprofefe_tasks.domain.errors import ConfigError, TemporaryError
from kprofefe_tasks.io.kube import Kube, KubeOptions


def test_context_namespace_cluster_user_and_timeout_flags(tmp_path: Path) -> None:
    with KubeAPIServer([make_pod("a", "web")], token="t0ken") as api:
        path = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="web")
        kube = Kube.connect(KubeOptions(kubeconfig=str(path), request_timeout=7.0, pool_size=32))
        assert kube.namespace == "web"  # the context's namespace, not "default"
        assert kube.timeout == (5.0, 7.0)
        assert kube.api_client.configuration.connection_pool_maxsize == 32
        assert [p["metadata"]["name"] for p in kube.list_pods("web")] == ["a"]
        # --cluster / --user override the context's: an unknown one is a clear configuration error
        with pytest.raises(ConfigError):
            Kube.connect(KubeOptions(kubeconfig=str(path), cluster="elsewhere"))
        config = yaml.safe_load(path.read_text())
        config["users"].append({"name": "nobody", "user": {"token": "wrong"}})
        path.write_text(yaml.safe_dump(config))
        wrong = Kube.connect(KubeOptions(kubeconfig=str(path), user="nobody"))
        with pytest.raises(Exception, match="401"):
            list(wrong.list_pods("web"))


def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Kubernetes configuration"):
        Kube.connect(KubeOptions(kubeconfig=str(tmp_path / "absent")))


def test_unreachable_api_server_is_temporary(tmp_path: Path) -> None:
    api = KubeAPIServer().start()
    path = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.stop()
    kube = Kube.connect(KubeOptions(kubeconfig=str(path)))
    with pytest.raises(TemporaryError) as err:
        list(kube.list_pods(None))
    assert err.value.reason == "kube-unreachable"
    with pytest.raises(TemporaryError):
        kube.get_pod("web", "x")
