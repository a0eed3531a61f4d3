#!/usr/bin/env bash
# Installs the Debian packages the test bed, the example app and the demo need,
# only when something is missing. Safe to run again; `make test` and
# `make demo` call it first.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have sshd || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
have ssh || need+=(openssh-client)
have erl || need+=(erlang-nox)
have elixir || need+=(elixir)
have git || need+=(git)
have haproxy || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
have ip || need+=(iproute2)
have socat || need+=(socat)
have npm || need+=(npm)
have node || need+=(nodejs)
have ssh-keygen || need+=(openssh-client)
have curl || need+=(curl)
have chromium || need+=(chromium)
# erlang-nox lacks the compiler-dev bits Mix needs on some images.
dpkg -s erlang-dev >/dev/null 2>&1 || need+=(erlang-dev)
# PostgreSQL 15 for the test bed's db host (testbed/postgres.go runs its
# initdb, postgres and psql), and the example app's driver (OTP app p1_pgsql).
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
dpkg -s erlang-p1-pgsql >/dev/null 2>&1 || need+=(erlang-p1-pgsql)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]}; run as root (apt-get install) or install them by hand" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}" >&2
start=$(date +%s.%N)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
end=$(date +%s.%N)
printf 'install-deps: done in %.1fs\n' "$(echo "$end - $start" | bc 2>/dev/null || echo 0)" >&2
