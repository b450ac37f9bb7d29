#!/bin/sh
# Build, lint, install, run and purge the Debian packages of mailrider.
#
#   sh tools/ports/debian_check.sh [EXTRA]      (as root, on Debian)
#
# Checks that the core package is a mail server that can take Postfix's place:
#
# - builds mailrider and one extra (EXTRA, default table-redis) with
#   `dpkg-buildpackage -us -uc` (source format 3.0 (quilt): the orig tarball is
#   made from a copy of the tree) and the committed contrib/debian/ files, and
#   mailrider a second time as the next Debian revision with a changed
#   /etc/mail/mailrider.conf; runs lintian (any E: tag fails);
# - installs Postfix if it is missing, then both packages with apt: Postfix
#   goes (Conflicts: mail-transport-agent); /usr/sbin/sendmail, mailq and
#   newaliases are ours, the configuration is a conffile, the users exist;
# - starts the installed /usr/bin/mailriderd on the packaged configuration
#   (only its port changed, with -D port=N; systemd need not run: the daemon
#   is started directly as root and drops to _mailrider and _mailriderq), and
#   sends a message to a throw-away local user through SMTP and one through
#   /usr/sbin/sendmail: both must reach ~/Maildir;
# - changes the conffile as an admin would (aliases from the extra's table
#   against the machine's server: Redis on 127.0.0.1:6379 for table-redis),
#   upgrades to the second build with --force-confold: the admin's file stays,
#   and a message to an alias that only the server knows reaches the user;
# - purges both packages, checking that no file they owned is left, and puts
#   the machine back: the user, the server's key and our files removed,
#   Postfix reinstalled when it was installed before.
#
# Needs: dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
# flit lintian fakeroot, the extra's driver package (fetched by apt), postfix
# (installed by apt when missing) and, for table-redis, redis-server running.
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
CONF=/etc/mail/mailrider.conf

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
MAILUSER=
REDIS_KEY=
BACKEND_CF=/etc/mail/mailrider-check-$$.cf
POSTFIX_BEFORE=
cleanup() {
	if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
	if [ -n "$INSTALLED" ]; then dpkg -P "$EXTRA_PKG" mailrider >/dev/null 2>&1 || true; fi
	if [ -n "$MAILUSER" ]; then userdel -r "$MAILUSER" >/dev/null 2>&1 || true; fi
	if [ -n "$REDIS_KEY" ]; then redis_cmd DEL "$REDIS_KEY" >/dev/null 2>&1 || true; fi
	rm -f "$BACKEND_CF"
	if [ -n "$POSTFIX_BEFORE" ] && ! installed postfix; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix \
			>"$WORK/postfix-restore.log" 2>&1 ||
			{ echo "WARNING: postfix could not be reinstalled:" >&2; tail -5 "$WORK/postfix-restore.log" >&2; }
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
# a Redis command on the machine's server
redis_cmd() {
	command -v redis-cli >/dev/null || return 1
	redis-cli -h 127.0.0.1 -p 6379 "$@"
}

# -- build ---------------------------------------------------------------------

build() { # build SOURCE_FOLDER PACKAGE FOLDER [REVISION]
	src="$3/$2-$VERSION"
	mkdir -p "$src"
	(cd "$1" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude='.*_cache' \
		--exclude=./debian -cf - .) | (cd "$src" && tar -xf -)
	# 3.0 (quilt): the upstream tarball beside the tree, the packaging inside it
	(cd "$3" && tar -czf "$2_$VERSION.orig.tar.gz" "$2-$VERSION")
	cp -R "$ROOT/contrib/debian/$2/debian" "$src/debian"
	if [ -n "${4:-}" ]; then
		# the next revision: a changelog entry and a changed default configuration
		{
			printf '%s (%s-%s) unstable; urgency=medium\n\n' "$2" "$VERSION" "$4"
			printf '  * Test upgrade (tools/ports/debian_check.sh).\n\n'
			printf ' -- %s  %s\n\n' "$(sed -n 's/^Maintainer: //p' "$src/debian/control")" \
				"$(date -R)"
			cat "$ROOT/contrib/debian/$2/debian/changelog"
		} >"$src/debian/changelog"
		printf '\n# changed in revision %s\n' "$4" >>"$src/debian/conf/mailrider.conf"
	fi
	step "dpkg-buildpackage -us -uc $2 ${4:+(revision $4)}"
	(cd "$src" && dpkg-buildpackage -us -uc >"$WORK/$2${4:-}.build.log" 2>&1) ||
		{ tail -40 "$WORK/$2${4:-}.build.log"; fail "dpkg-buildpackage $2"; }
}

# a fresh clone on a machine without the Debian build tools is not a failure:
# say what would install them (.ci/run does) and skip
if ! missing=$(dpkg-checkbuilddeps "$ROOT/contrib/debian/mailrider/debian/control" 2>&1); then
	echo "SKIP: unmet build dependencies (${missing##*: }); install them with:" \
		"apt-get install dpkg-dev debhelper dh-python pybuild-plugin-pyproject" \
		"python3-all flit lintian fakeroot" >&2
	exit 77
fi
if [ "$EXTRA" = table-redis ]; then
	# the extra is checked against a real server: the machine's Redis
	redis_cmd PING >/dev/null 2>&1 || {
		echo "SKIP: no Redis answering on 127.0.0.1:6379 (apt-get install redis-server)" >&2
		exit 77
	}
fi
REVISION=$(dpkg-parsechangelog -l "$ROOT/contrib/debian/mailrider/debian/changelog" -S Version)
REVISION=${REVISION##*-}
NEXT=$((REVISION + 1))
mkdir "$WORK/next"
build "$ROOT/core" mailrider "$WORK"
build "$ROOT/extras/$EXTRA" "$EXTRA_PKG" "$WORK"
build "$ROOT/core" mailrider "$WORK/next" "$NEXT"
CORE_DEB="$WORK/mailrider_${VERSION}-${REVISION}_all.deb"
EXTRA_DEB="$WORK/${EXTRA_PKG}_${VERSION}-${REVISION}_all.deb"
NEXT_DEB="$WORK/next/mailrider_${VERSION}-${NEXT}_all.deb"
for f in "$CORE_DEB" "$EXTRA_DEB" "$NEXT_DEB" "$WORK/mailrider_${VERSION}-${REVISION}.dsc"; do
	[ -f "$f" ] || fail "$f was not built"
done

step "lintian"
lintian --tag-display-limit 0 "$CORE_DEB" "$EXTRA_DEB" >"$WORK/lintian.txt" 2>&1 || true
sed 's/^/  /' "$WORK/lintian.txt"
if grep -q '^E: ' "$WORK/lintian.txt"; then fail "lintian reported errors"; fi

# -- install over Postfix --------------------------------------------------------

step "postfix"
if installed postfix; then
	POSTFIX_BEFORE=1
else
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix \
		>"$WORK/postfix.log" 2>&1 || {
		tail -5 "$WORK/postfix.log" >&2
		echo "SKIP: postfix cannot be installed here (apt-get install postfix)" >&2
		exit 77
	}
fi

step "install"
INSTALLED=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	"$CORE_DEB" "$EXTRA_DEB" >"$WORK/install.log" 2>&1 ||
	{ tail -20 "$WORK/install.log"; fail "apt-get install"; }
if installed postfix; then fail "postfix is still installed (Conflicts: mail-transport-agent)"; fi
for u in _mailrider _mailriderq _mailriderx; do
	getent passwd "$u" >/dev/null || fail "user $u was not created"
done
[ -f /usr/lib/sysusers.d/mailrider.conf ] || fail "the sysusers file is not installed"
[ -x "/usr/libexec/mailrider/table-${EXTRA#table-}" ] ||
	fail "/usr/libexec/mailrider/table-${EXTRA#table-} is missing"
[ -f /usr/share/man/man8/mailriderd.8.gz ] || fail "mailriderd.8 is not installed"
for prog in /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases; do
	[ "$(readlink -f "$prog")" = /usr/bin/mailriderctl ] || fail "$prog is not mailriderctl"
done
dpkg-query -W -f='${Conffiles}\n' mailrider | grep -q "^ $CONF " ||
	fail "$CONF is not a conffile"
/usr/bin/mailriderd -n >"$WORK/n.log" 2>&1 || { cat "$WORK/n.log"; fail "mailriderd -n on $CONF"; }
# where systemd runs, the service started on port 25: the check runs its own daemon
if [ -d /run/systemd/system ]; then systemctl stop mailrider.service || true; fi
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

# -- run -------------------------------------------------------------------------

start_daemon() { # on $CONF, port changed
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
}

stop_daemon() {
	kill -TERM "$DAEMON"
	for _ in $(seq 1 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.2; done
	kill -0 "$DAEMON" 2>/dev/null && fail "daemon still running 10 s after SIGTERM"
	wait "$DAEMON" || true
	DAEMON=
}

smtp_send() { # smtp_send RCPT TOKEN
	/usr/bin/python3 - "$PORT" "$1" "$2" <<'EOF' || { cat "$WORK/daemon.log"; fail "SMTP transaction to $1"; }
import smtplib, sys
port, rcpt, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
msg = f"From: root@localhost\r\nTo: {rcpt}\r\nSubject: {token}\r\n\r\n{token}\r\n"
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    refused = s.sendmail("root@localhost", [rcpt], msg)
    assert not refused, refused
EOF
}

delivered() { # delivered TOKEN WHAT: the user's ~/Maildir/new has it, owned by the user
	for _ in $(seq 1 100); do
		file=$(grep -rls "$1" "$MAILHOME/Maildir/new/" 2>/dev/null | head -1)
		if [ -n "$file" ]; then
			[ "$(stat -c %U "$file")" = "$MAILUSER" ] || fail "$2: the mail file belongs to $(stat -c %U "$file")"
			return 0
		fi
		sleep 0.2
	done
	cat "$WORK/daemon.log"
	fail "$2: not delivered to $MAILHOME/Maildir"
}

step "start the daemon on $CONF"
MAILUSER=mrchk$$
MAILHOME=/home/$MAILUSER
useradd --create-home --home-dir "$MAILHOME" --shell /usr/sbin/nologin "$MAILUSER" ||
	{ MAILUSER=; fail "useradd"; }
start_daemon
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

TOKEN="debian-check-$$-$(date +%s)"
step "deliver through SMTP to $MAILUSER"
smtp_send "$MAILUSER@localhost" "$TOKEN-smtp"
delivered "$TOKEN-smtp" "SMTP"

step "deliver through /usr/sbin/sendmail"
printf 'To: %s@localhost\nSubject: %s\n\n%s\n' "$MAILUSER" "$TOKEN-sendmail" "$TOKEN-sendmail" |
	/usr/sbin/sendmail -oi "$MAILUSER@localhost" || fail "/usr/sbin/sendmail exited $?"
delivered "$TOKEN-sendmail" "sendmail"
/usr/bin/mailq >"$WORK/mailq.txt" 2>&1 || { cat "$WORK/mailq.txt"; fail "mailq"; }
/usr/bin/newaliases >"$WORK/newaliases.txt" 2>&1 || { cat "$WORK/newaliases.txt"; fail "newaliases"; }
/usr/bin/mailriderctl show status >"$WORK/status.txt" 2>&1 || { cat "$WORK/status.txt"; fail "mailriderctl show status"; }
grep -q '^MDA running$' "$WORK/status.txt" || { cat "$WORK/status.txt"; fail "mailriderctl show status: MDA not running"; }

step "stop the daemon"
stop_daemon
sleep 0.5
for pid in $CHILDREN; do
	if kill -0 "$pid" 2>/dev/null; then fail "child $pid left running"; fi
done

# -- upgrade with the admin's configuration ----------------------------------------

step "change $CONF: aliases from ${EXTRA#table-}"
ALIAS=routed$$
case $EXTRA in
table-redis)
	REDIS_KEY="mailrider-debian-check:$$:$ALIAS"
	redis_cmd SET "$REDIS_KEY" "$MAILUSER" >/dev/null || fail "redis SET"
	printf 'master 127.0.0.1\nmaster_port 6379\nquery_alias GET mailrider-debian-check:%s:%%s\n' "$$" \
		>"$BACKEND_CF"
	;;
*)
	echo "SKIP: no server check written for $EXTRA (table-redis has one)" >&2
	exit 77
	;;
esac
chmod 0644 "$BACKEND_CF"
sed -i -e "s|^table aliases .*|table aliases ${EXTRA#table-}:$BACKEND_CF|" "$CONF"
grep -q "^table aliases ${EXTRA#table-}:" "$CONF" || fail "$CONF has no 'table aliases' line to change"
cp "$CONF" "$WORK/admin.conf"

step "upgrade to revision $NEXT (--force-confold)"
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$NEXT_DEB" >"$WORK/upgrade.log" 2>&1 ||
	{ cat "$WORK/upgrade.log"; fail "dpkg -i $NEXT_DEB"; }
[ "$(dpkg-query -W -f='${Version}' mailrider)" = "$VERSION-$NEXT" ] || fail "not upgraded"
cmp -s "$CONF" "$WORK/admin.conf" || fail "the upgrade replaced the admin's $CONF"
grep -q "changed in revision $NEXT" "$CONF.dpkg-dist" ||
	fail "the new default configuration is not beside it as $CONF.dpkg-dist"
dpkg -L mailrider | sort -u >>"$WORK/owned.txt"

step "deliver through an alias of ${EXTRA#table-}"
start_daemon
smtp_send "$ALIAS@localhost" "$TOKEN-alias"
delivered "$TOKEN-alias" "alias $ALIAS from ${EXTRA#table-}"
stop_daemon

# -- purge -----------------------------------------------------------------------

step "purge"
dpkg -P "$EXTRA_PKG" mailrider >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; fail "dpkg -P"; }
INSTALLED=
# every file the packages owned, and every folder named after them, must be gone
LEFT=$(sort -u "$WORK/owned.txt" | while read -r path; do
	case $path in
	*mailrider*) if [ -e "$path" ] || [ -L "$path" ]; then echo "$path"; fi ;;
	# a file, or a link that is not a folder (/lib is one with merged /usr)
	*) if { [ -f "$path" ] || [ -L "$path" ]; } && [ ! -d "$path" ]; then echo "$path"; fi ;;
	esac
done)
[ -z "$LEFT" ] || fail "left behind after purge: $LEFT"
for path in /var/spool/mailrider /usr/libexec/mailrider "$CONF" "$CONF.dpkg-dist" \
	/usr/sbin/sendmail /usr/lib/sysusers.d/mailrider.conf; do
	[ ! -e "$path" ] && [ ! -L "$path" ] || fail "left behind after purge: $path"
done
if find /usr/lib/python3/dist-packages -maxdepth 1 -name 'mailrider*' | grep -q .; then
	fail "python modules left behind"
fi

echo "PASS: built, linted, installed over postfix, delivered (SMTP, sendmail, ${EXTRA#table-} alias)," \
	"upgraded keeping the conffile, purged (mailrider $VERSION-$REVISION -> $VERSION-$NEXT, $EXTRA_PKG)"
