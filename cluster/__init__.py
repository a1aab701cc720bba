"""Cluster configs (`ray up` YAMLs, KubeRay manifests, Dockerfile) and `cluster.local`, the real
multi-node Ray cluster on 127.0.0.1 that integration tests use. See cluster/README.md."""
