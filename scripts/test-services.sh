#!/usr/bin/env bash
# Make sure what the test suite talks to is installed and running: the real registry clients
# (skopeo, containerd with ctr, podman, the Docker engine), Chromium, MariaDB, Redis, HAProxy (the load
# balancer in front of the replicas in tests/replicas.py) and Debian's docker-registry (the upstream
# registry of the mirror tests). Starts the local servers when they are
# installed but stopped; the client tests start their own containerd and dockerd, the replica
# tests their own HAProxy.
set -euo pipefail

need_apt=()
command -v skopeo >/dev/null || need_apt+=(skopeo)
{ command -v containerd >/dev/null && command -v ctr >/dev/null; } || need_apt+=(containerd)
command -v podman >/dev/null || need_apt+=(podman)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need_apt+=(docker.io)
command -v mariadbd >/dev/null || command -v mysqld >/dev/null || need_apt+=(mariadb-server)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# the upstream of the mirror tests: CNCF Distribution, as Debian packages it
command -v docker-registry >/dev/null || [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
# the browser of the web interface tests (driven by Playwright, which downloads none)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 0.5; done
  echo "nothing answers on 127.0.0.1:$1 ($2)" >&2; return 1
}

if ! up 3306; then
  echo "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec "$(command -v mariadbd || command -v mysqld)"
  wait_port 3306 MariaDB
fi
if ! up 6379; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/test.log
  wait_port 6379 Redis
fi
echo "test services ready: skopeo $(skopeo --version | awk '{print $3}')," \
  "containerd $(containerd --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}')," \
  "Docker $("$(command -v dockerd || echo /usr/sbin/dockerd)" --version | awk '{print $3}' | tr -d ,)," \
  "HAProxy $("$(command -v haproxy || echo /usr/sbin/haproxy)" -v | awk 'NR==1 {print $3}')," \
  "Chromium $(chromium --version 2>/dev/null | awk '{print $2}'), MariaDB :3306, Redis :6379"
