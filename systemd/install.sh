#!/bin/sh
# Installs the tracker-daemon system service; run by `make install-systemd` (as root).
#
#   EXE      absolute path of the tracker-daemon to run (the Makefile passes $(BIN)/tracker-daemon)
#   DESTDIR  install into this tree instead of / (packaging, tests): files only, no
#            systemd-sysusers, no daemon-reload
#
# Safe to run again: units and the sysusers file are replaced, an existing config is kept.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
destdir=${DESTDIR:-}
exe=${EXE:?EXE must name the tracker-daemon executable}

if [ ! -x "$exe" ]; then
    echo "install-systemd: $exe is not an executable: run 'make setup' first" >&2
    exit 1
fi
exe=$(realpath "$exe")

unit_dir=$destdir/etc/systemd/system
sysusers_dir=$destdir/etc/sysusers.d
conf_dir=$destdir/etc/tracker-daemon
install -d -m 0755 "$unit_dir" "$sysusers_dir" "$conf_dir"

# The unit, with ExecStart= pointing at this installation (written atomically).
sed "s|^ExecStart=[^ ]*|ExecStart=$exe|" "$here/tracker-daemon.service" >"$unit_dir/.tracker-daemon.service.tmp"
chmod 0644 "$unit_dir/.tracker-daemon.service.tmp"
mv -f "$unit_dir/.tracker-daemon.service.tmp" "$unit_dir/tracker-daemon.service"
echo "installed $unit_dir/tracker-daemon.service (ExecStart=$exe)"

install -m 0644 "$here/tracker-daemon.sysusers" "$sysusers_dir/tracker-daemon.conf"
echo "installed $sysusers_dir/tracker-daemon.conf"

if [ -e "$conf_dir/config.toml" ]; then
    echo "kept existing $conf_dir/config.toml"
else
    # 0640: a backend_store_uri may carry credentials; group "tracker" (the service) reads it.
    install -m 0640 "$here/config.toml" "$conf_dir/config.toml"
    echo "installed $conf_dir/config.toml"
fi

if [ -z "$destdir" ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$sysusers_dir/tracker-daemon.conf"
        echo "applied $sysusers_dir/tracker-daemon.conf (user tracker-daemon, group tracker)"
    else
        echo "systemd-sysusers not found: create user tracker-daemon and group tracker yourself" >&2
    fi
    if getent group tracker >/dev/null 2>&1; then
        chgrp tracker "$conf_dir/config.toml"
    fi
    if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
        systemctl daemon-reload
        echo "systemctl daemon-reload: done"
    else
        echo "systemd is not PID 1 here: skipped systemctl daemon-reload"
    fi
fi

# ProtectHome=yes hides /home, /root and /run/user from the service, and user tracker-daemon
# must be able to read the venv and its interpreter: both must live elsewhere (e.g.
# `make setup VENV=/opt/tracker-daemon/venv PYTHON=/usr/bin/python3`).
python=$(realpath "$(dirname "$exe")/python" 2>/dev/null || true)
for path in "$exe" "$python"; do
    case $path in
    /home/* | /root/* | /run/user/*)
        echo "WARNING: $path is under /home, /root or /run/user, which the service cannot see" \
            "(ProtectHome=yes) or read as user tracker-daemon: it will fail to start." \
            "Create the venv elsewhere with a system python, e.g." \
            "make setup VENV=/opt/tracker-daemon/venv PYTHON=/usr/bin/python3" >&2
        ;;
    esac
done

cat <<EOF

Next steps:
    systemctl enable --now tracker-daemon        # start now and at boot
    usermod -aG tracker <user>                   # each user whose jobs log through the daemon
    systemctl status tracker-daemon              # state and the daemon's STATUS= counters
    journalctl -u tracker-daemon -f              # logs
    $exe status   # ask the daemon (as root or a tracker member)
Settings: $conf_dir/config.toml (then: systemctl restart tracker-daemon)
EOF
