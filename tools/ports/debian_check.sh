#!/bin/sh
# Build, lint, install, run and purge the Debian packages of mailrider.
#
#   sh tools/ports/debian_check.sh [EXTRA]      (as root, on Debian)
#
# Builds mailrider and one extra (EXTRA, default table-redis) with
# dpkg-buildpackage from copies of the tree and the committed contrib/debian/
# files, runs lintian (any E: tag fails), installs both with apt, starts the
# installed /usr/bin/mailriderd with its built-in configuration on a free port
# (systemd need not run: the daemon is started directly as root and drops to
# _mailrider and _mailriderq), delivers one message with smtplib, checks that it reached the
# Maildir, checks that the extra's backend is found through libexec, stops the
# daemon and purges both packages, checking that no file they owned is left.
#
# Needs: dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
# flit lintian fakeroot, and the extra's driver package (fetched by apt).
# Exit status: 0 when every step passed, 1 otherwise, 77 when not applicable.

set -eu
# the system's tools only: a pyenv or virtualenv python3 on PATH would be
# picked up by pybuild instead of Debian's
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EXTRA=${1:-table-redis}
EXTRA_PKG=mailrider-$EXTRA
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/core/pyproject.toml")

if [ "$(id -u)" != 0 ] || ! command -v dpkg-buildpackage >/dev/null; then
	echo "SKIP: needs root and dpkg-buildpackage" >&2
	exit 77
fi
if [ ! -d "$ROOT/extras/$EXTRA" ]; then
	echo "SKIP: no extras/$EXTRA" >&2
	exit 77
fi
if [ -e /etc/mail/mailrider.conf ] || dpkg -s mailrider >/dev/null 2>&1; then
	echo "SKIP: mailrider is already installed or configured here" >&2
	exit 77
fi

# one check at a time per machine: it installs and purges system packages
exec 9>/tmp/mailrider-debian-check.lock
if ! flock -n 9; then
	echo "SKIP: another debian_check.sh is running" >&2
	exit 77
fi

WORK=$(mktemp -d /tmp/mailrider-deb.XXXXXX)
DAEMON=
INSTALLED=
cleanup() {
	if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; fi
	if [ -n "$INSTALLED" ]; then dpkg -P "$EXTRA_PKG" mailrider >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# -- build ---------------------------------------------------------------------

build() { # build SOURCE_FOLDER PACKAGE
	src="$WORK/$2-$VERSION"
	mkdir -p "$src"
	(cd "$1" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude='.*_cache' \
		--exclude=./debian -cf - .) | (cd "$src" && tar -xf -)
	cp -R "$ROOT/contrib/debian/$2/debian" "$src/debian"
	step "dpkg-buildpackage $2"
	(cd "$src" && dpkg-buildpackage -us -uc -b >"$WORK/$2.build.log" 2>&1) ||
		{ tail -40 "$WORK/$2.build.log"; fail "dpkg-buildpackage $2"; }
}

# a fresh clone on a machine without the Debian build tools is not a failure:
# say what would install them (.ci/run does) and skip
if ! missing=$(dpkg-checkbuilddeps "$ROOT/contrib/debian/mailrider/debian/control" 2>&1); then
	echo "SKIP: unmet build dependencies (${missing##*: }); install them with:" \
		"apt-get install dpkg-dev debhelper dh-python pybuild-plugin-pyproject" \
		"python3-all flit lintian fakeroot" >&2
	exit 77
fi
build "$ROOT/core" mailrider
build "$ROOT/extras/$EXTRA" "$EXTRA_PKG"
CORE_DEB="$WORK/mailrider_${VERSION}-1_all.deb"
EXTRA_DEB="$WORK/${EXTRA_PKG}_${VERSION}-1_all.deb"
[ -f "$CORE_DEB" ] && [ -f "$EXTRA_DEB" ] || fail "packages not found in $WORK"

step "lintian"
lintian --tag-display-limit 0 "$CORE_DEB" "$EXTRA_DEB" >"$WORK/lintian.txt" 2>&1 || true
sed 's/^/  /' "$WORK/lintian.txt"
if grep -q '^E: ' "$WORK/lintian.txt"; then fail "lintian reported errors"; fi

# -- install and run -------------------------------------------------------------

step "install"
INSTALLED=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	"$CORE_DEB" "$EXTRA_DEB" >"$WORK/install.log" 2>&1 ||
	{ tail -20 "$WORK/install.log"; fail "apt-get install"; }
for u in _mailrider _mailriderq _mailriderx; do
	getent passwd "$u" >/dev/null || fail "user $u was not created"
done
[ -x "/usr/libexec/mailrider/table-${EXTRA#table-}" ] ||
	fail "/usr/libexec/mailrider/table-${EXTRA#table-} is missing"
[ -f /usr/share/man/man8/mailriderd.8.gz ] || fail "mailriderd.8 is not installed"
dpkg -L mailrider "$EXTRA_PKG" | sort -u >"$WORK/owned.txt"

step "backend discovery"
cat >"$WORK/backend.conf" <<EOF
table users ${EXTRA#table-}:$WORK/backend.cf
listen on 127.0.0.1 port 2525
action "local" maildir userbase <users>
match from local for local action "local"
EOF
: >"$WORK/backend.cf"
/usr/bin/mailriderd -n -f "$WORK/backend.conf" >"$WORK/n.log" 2>&1 ||
	{ cat "$WORK/n.log"; fail "mailriderd -n with a ${EXTRA#table-} table"; }

step "start the daemon"
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/mailriderd -d -D "port=$PORT" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
/usr/bin/python3 - "$PORT" <<'EOF' || { cat "$WORK/daemon.log"; fail "daemon did not listen"; }
import socket, sys, time
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
EOF
# each child re-executes itself, then drops root: wait for all six to have done
# so (the queue to its own user, the others to _mailrider)
USERS=
WANT=" 5 _mailrider 1 _mailriderq"
for _ in $(seq 1 50); do
	USERS=$(ps --ppid "$DAEMON" -o user:32=,args= | awk '/mailrider\.proc\.child/ {print $1}' | sort | uniq -c | tr -s ' ' | tr -d '\n')
	[ "$USERS" = "$WANT" ] && break
	sleep 0.2
done
[ "$USERS" = "$WANT" ] || fail "children: '$USERS', want 5 running as _mailrider, 1 as _mailriderq"
CHILDREN=$(ps --ppid "$DAEMON" -o pid=)

step "deliver one message"
TOKEN="debian-check-$$-$(date +%s)"
/usr/bin/python3 - "$PORT" "$TOKEN" <<'EOF' || fail "SMTP transaction"
import smtplib, sys
port, token = int(sys.argv[1]), sys.argv[2]
msg = f"From: root@localhost\r\nTo: alice@localhost\r\nSubject: {token}\r\n\r\n{token}\r\n"
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    refused = s.sendmail("root@localhost", ["alice@localhost"], msg)
    assert not refused, refused
EOF
FOUND=
for _ in $(seq 1 100); do
	if grep -rqs "$TOKEN" /var/spool/mailrider/maildir/*/new/ 2>/dev/null; then FOUND=1; break; fi
	sleep 0.2
done
[ -n "$FOUND" ] || { cat "$WORK/daemon.log"; fail "message not delivered to /var/spool/mailrider/maildir"; }
OWNER=$(stat -c %U "$(grep -rls "$TOKEN" /var/spool/mailrider/maildir/*/new/ | head -1)")
[ "$OWNER" = "_mailrider" ] || fail "delivered file belongs to $OWNER"
/usr/bin/mailriderctl show status | grep -q '^MDA running$' || fail "mailriderctl show status"

step "stop the daemon"
kill -TERM "$DAEMON"
for _ in $(seq 1 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.2; done
kill -0 "$DAEMON" 2>/dev/null && fail "daemon still running 10 s after SIGTERM"
wait "$DAEMON" || true
DAEMON=
sleep 0.5
for pid in $CHILDREN; do
	if kill -0 "$pid" 2>/dev/null; then fail "child $pid left running"; fi
done

# -- purge -----------------------------------------------------------------------

step "purge"
dpkg -P "$EXTRA_PKG" mailrider >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; fail "dpkg -P"; }
INSTALLED=
# every file the packages owned, and every folder named after them, must be gone
LEFT=$(while read -r path; do
	case $path in
	*mailrider*) if [ -e "$path" ] || [ -L "$path" ]; then echo "$path"; fi ;;
	*) if [ -f "$path" ] && [ ! -d "$path" ]; then echo "$path"; fi ;;
	esac
done <"$WORK/owned.txt")
[ -z "$LEFT" ] || fail "left behind after purge: $LEFT"
for path in /var/spool/mailrider /usr/libexec/mailrider /etc/mail/mailrider.conf; do
	[ ! -e "$path" ] || fail "left behind after purge: $path"
done
if find /usr/lib/python3/dist-packages -maxdepth 1 -name 'mailrider*' | grep -q .; then
	fail "python modules left behind"
fi

echo "PASS: built, linted, installed, delivered, purged (mailrider, $EXTRA_PKG $VERSION)"
