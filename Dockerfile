# One image for every quickpay process: shard workers, gateway workers, monitor.
#
# Online (registry reachable):   docker build .
# Offline (no registry, no index): scripts/compose-smoke does it; by hand:
#   scripts/build-base-image quickpay-base:bookworm        # debootstrap, no registry
#   python3 -m pip wheel -w wheelhouse . 'setuptools>=68'  # on the host, before the build
#   docker build --build-arg BASE_IMAGE=quickpay-base:bookworm .
# If the build context holds a non-empty wheelhouse/, every Python package comes from it
# (pip --no-index: no package index is contacted); otherwise pip uses its default index.
# Works with the classic builder (docker-compose v1) and BuildKit.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/quickpay
WORKDIR /src
# `wheelhous[e]` matches the optional wheelhouse directory; pyproject.toml is always there, so
# the COPY never fails when there is no wheelhouse (its contents land in /wheelhouse).
COPY pyproject.toml wheelhous[e] /wheelhouse/
COPY pyproject.toml README.md ./
COPY kernel ./kernel
COPY quickpay ./quickpay
COPY gateway ./gateway
COPY ledger ./ledger
COPY fraud ./fraud
COPY loadtest ./loadtest
COPY notify ./notify
COPY quickpay_sdk ./quickpay_sdk
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheelhouse only (no index)"; \
        /opt/quickpay/bin/pip install --no-index --find-links /wheelhouse .; \
    else \
        /opt/quickpay/bin/pip install .; \
    fi; \
    /opt/quickpay/bin/quickpay --help >/dev/null; \
    /opt/quickpay/bin/python -c 'import ledger.pg, gateway.app, quickpay.monitor, notify.service, fraud.ruleset as r; assert r.default_rules_path().is_file()'

FROM ${BASE_IMAGE}
# The virtualenv is copied alone: no wheelhouse, sources or build caches in the final image.
COPY --from=build /opt/quickpay /opt/quickpay
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin quickpay
ENV PATH=/opt/quickpay/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["quickpay"]
CMD ["--help"]
