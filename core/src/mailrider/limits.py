"""Every protocol limit, named, with the RFC section it comes from.

Values here are defaults; the configuration may override those marked
configurable.
"""

from __future__ import annotations

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
# We allow more, as Postfix and OpenSMTPD do, because ESMTP parameters
# (RFC 1870 SIZE, RFC 3461 DSN ORCPT/ENVID, RFC 6531 SMTPUTF8) lengthen it.
COMMAND_LINE_MAX = 2048
#: bytes pony keeps reading into a session's machine while a command waits on
#: another process: enough for a client's whole pipelined group (RFC 2920), so
#: that what it sent after STARTTLS or a DATA about to be refused is seen when
#: the answer is given; past this, reading pauses until the answer
PIPELINE_READ_AHEAD = 64 * 1024

# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
# Longer lines are a reason to reject (RFC 5322 2.1.1 hard limit 998 + CRLF).
DATA_LINE_MAX = 1000

# RFC 5321 4.5.3.1.3 / 4.5.3.1.2: path 256, domain 255, local-part 64.
PATH_MAX = 256
DOMAIN_MAX = 255
LOCAL_PART_MAX = 64

# RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted; OpenSMTPD
# defaults to 1000 per transaction (configurable: smtp limit max-rcpt).
MAX_RCPT = 1000
# OpenSMTPD: 100 transactions per session (configurable: smtp limit max-mails).
MAX_MAILS = 100

# Bad commands before the session is closed with 421 4.7.0 (aiosmtpd's
# bogus-command limit; Postfix smtpd_hard_error_limit is 20).
MAX_ERRORS = 20
# Commands in a session before 421 (a bound against endless NOOP loops).
MAX_COMMANDS = 10000

# smtp max-message-size default, as OpenSMTPD: 35 MB.
MAX_MESSAGE_SIZE = 35 * 1024 * 1024

# RFC 5321 4.5.3.2: server timeout waiting for the next command: 5 minutes.
# OpenSMTPD uses one 300 s session timeout.
SESSION_TIMEOUT = 300.0
# RFC 5321 4.5.3.2.7: server DATA block timeout: 3 minutes between chunks.
DATA_TIMEOUT = 180.0
# Test-only: MAILRIDER_SESSION_TIMEOUT in pony's environment replaces
# SESSION_TIMEOUT (the slowloris tests cannot wait 5 minutes); there is no
# configuration keyword, as in OpenSMTPD.
SESSION_TIMEOUT_ENV = "MAILRIDER_SESSION_TIMEOUT"
# Pregreet test (Postfix postscreen_greet_wait, sendmail greet_pause): the
# 220 banner waits this long, and a client that talks before it is answered
# 554 5.7.1 and disconnected (RFC 5321 4.3.1: the client waits for the
# greeting). Not applied to local (sendmail) sessions nor to clients on a
# loopback address (local programs; benchmarks); the test-only override
# MAILRIDER_GREETING_DELAY in pony's environment sets it for every client.
GREETING_DELAY = 1.0
GREETING_DELAY_ENV = "MAILRIDER_GREETING_DELAY"
# Benchmark/test-only: MAILRIDER_KEY_IN_PROCESS=force in pony's environment
# makes pony load its TLS private keys itself instead of delegating them to
# klondike (proc/pony_tls.py; logged as the 'smtp key-in-process' warning),
# so tools/bench/tls_daemon.py can compare both with one configuration.
KEY_IN_PROCESS_ENV = "MAILRIDER_KEY_IN_PROCESS"
# Concurrent SMTP sessions from one client before new ones get 421 4.7.0
# (configurable: smtp limit sessions-per-address; OpenSMTPD has no such
# keyword; Postfix smtpd_client_connection_count_limit is 50 as well). An
# IPv6 client is counted by its /64 (RFC 6177: one site, often one host, gets
# a /64 and may use any address in it).
MAX_SESSIONS_PER_IP = 50
IPV6_CLIENT_PREFIX = 64
# The same cap for loopback and local socket clients (smtp limit
# sessions-per-local-address); 0: none, as Postfix exempts $mynetworks, so a
# local web application may open hundreds of connections.
MAX_SESSIONS_PER_LOCAL = 0
# SMTP sessions open at once, all clients together (smtp limit sessions);
# above it new connections get 421 4.7.0. Each session costs pony a few KiB
# and one descriptor.
MAX_SESSIONS = 10000
# connections the kernel queues on an SMTP listener before pony accepts them
# (listen(2) backlog; the kernel caps it at net.core.somaxconn). A burst of
# connections past it is dropped and the clients retry their SYN a second
# or more later: hundreds of clients connecting at once need more than the
# 100 asyncio would set
LISTEN_BACKLOG = 1024
# pony runs a full garbage collection after this many closed sessions: what
# asyncio leaves in reference cycles per connection is freed then, not after
# thousands have piled up (docs/performance.md §1)
SESSIONS_PER_GC = 256
# Deliveries the recipients of one transaction may expand to, after
# removing duplicates (smtp limit max-deliveries): RCPTs past it get
# 452 4.5.3 (RFC 5321 4.5.3.1.10), so aliases cannot make one transaction
# hold an unbounded list in pony. Ten times as many expansions, duplicates
# included, bound lka's work for one transaction (proc/pony_deliveries.py).
MAX_DELIVERIES = 10000

# Data-line filters: message bytes a session may have sent to lka that the
# filters have not read yet; past it pony stops reading the client until
# they catch up (backpressure: a slow filter must not make lka buffer mail).
FILTER_DATA_WINDOW = 256 * 1024

# Received headers counted for loop detection (OpenSMTPD: 100 -> 554 5.4.6)
MAX_HOPS = 100

# Header hygiene (smtp/hygiene.py): bytes of one line start held while its
# field name is read (RFC 5322 2.1.1: 998 characters and CRLF); a longer line
# without a colon is not a header field.
HEADER_LINE_HOLD = 1000

# ``senders <t> masquerade``: the header section held to rewrite From: (a
# message whose header section is longer passes through unchanged, logged)
MASQUERADE_HEADER_MAX = 64 * 1024

# Scheduler (docs/queue.md §5): retry base for local delivery and bounces, and
# for relaying.
RETRY_BASE_MDA = 10
RETRY_BASE_MTA = 400
QUEUE_TTL = 4 * 86400
BOUNCE_TTL = 7 * 86400

# Spool files pony holds ready, or has asked for, before a session needs one
# (proc/pony_spool.SpoolFiles; docs/performance.md §9), at most; how long it
# stops asking after the queue failed to create one ...
SPOOL_FILES_AHEAD = 16
SPOOL_FILES_RETRY = 1.0
# ... and after how long without a session taking one they are given back
SPOOL_FILES_IDLE = 2.0

# Local deliveries in flight at once (OpenSMTPD: mda limit max-session 50).
MDA_MAX_SESSIONS = 50
# Envelopes the scheduler has out for delivery at once (scheduler limit
# max-inflight; OpenSMTPD's default is 5000). Each holds a message descriptor
# in the queue (and, for a local delivery, in the parent) while it is out;
# local deliveries of one user go to their worker in batches of
# DELIVERY_BATCH_MAX, so a backlog needs several batches in flight to keep
# the worker busy: docs/performance.md §4.
SCHEDULER_MAX_INFLIGHT = 500
# Delivery processes of one user at once (OpenSMTPD: mda limit
# max-session-per-user 7); docs/config.md §12.
MDA_MAX_SESSIONS_PER_USER = 7

# IPC: the largest frame a process accepts from a peer.
IPC_FRAME_MAX = 16 * 1024 * 1024
# IPC: the most descriptors one frame carries (ipc/channel.py)
IPC_FDS_MAX = 16
# local deliveries in one ForkDeliveries request, queue -> parent: one
# descriptor each, so at most IPC_FDS_MAX
FORK_DELIVERIES_MAX = 16
# Table keys: OpenSMTPD refuses keys of 1024 bytes and more.
TABLE_KEY_MAX = 1023
# Proc tables: how long one request may take before it is answered as a
# temporary failure.
TABLE_REQUEST_TIMEOUT = 10.0

# Local delivery (delivery/).
# mbox dot-lock older than this is taken as left by a crashed writer and
# removed (mail.local and procmail use a few minutes too).
MBOX_LOCK_STALE = 300.0
# mbox: how long a delivery waits for the mailbox locks (temporary failure after).
MBOX_LOCK_TIMEOUT = 60.0
# mda: how long a delivery command may run before its process group is killed.
MDA_TIMEOUT = 300.0
# mda: how much of the command's stderr is kept to explain a failure.
MDA_STDERR_MAX = 4096
# LMTP client (RFC 2033 uses the RFC 5321 4.5.3.2 client timeouts).
LMTP_TIMEOUT = 300.0
LMTP_GREETING_TIMEOUT = 300.0  # 4.5.3.2.1 initial 220: 5 minutes
LMTP_COMMAND_TIMEOUT = 300.0  # 4.5.3.2.2/.3 MAIL, RCPT: 5 minutes
LMTP_DATA_INIT_TIMEOUT = 120.0  # 4.5.3.2.4 DATA initiation: 2 minutes
LMTP_DATA_BLOCK_TIMEOUT = 180.0  # 4.5.3.2.5 each data block: 3 minutes
LMTP_DATA_END_TIMEOUT = 600.0  # 4.5.3.2.6 final "." reply: 10 minutes
# LMTP: bound on one reply line and on the lines of one multi-line reply.
LMTP_REPLY_LINE_MAX = 4096
LMTP_REPLY_LINES_MAX = 100

# Proc tables: how long the backend has to answer the handshake, the restart
# delay after it dies (doubling from MIN up to MAX; reset once it has stayed
# up for MAX), and the longest protocol line either side accepts. OpenSMTPD
# copies values into fixed buffers of a few KiB; 64 KiB leaves room for long
# alias lists.
TABLE_HANDSHAKE_TIMEOUT = 10.0
TABLE_RESTART_MIN = 0.5
TABLE_RESTART_MAX = 30.0
TABLE_LINE_MAX = 64 * 1024

# DNS stub resolver (dns/).
# RFC 1035 4.2.1 / DNS flag day 2020: EDNS0 UDP payload size we advertise.
DNS_UDP_PAYLOAD = 1232
# resolv.conf(5) defaults: 5 s per try, 2 attempts over the server list.
DNS_TIMEOUT = 5.0
DNS_ATTEMPTS = 2
# CNAME hops followed for one lookup (RFC 1034 3.6.2 asks for a bound).
DNS_CNAME_MAX = 8
# Cached answers kept (least recently used evicted first).
DNS_CACHE_MAX = 4096
# RFC 8767 4: cap on a positive TTL (7 days); RFC 2308 5: negative
# answers are kept 1-3 hours at most.
DNS_TTL_MAX = 7 * 86400
DNS_NEG_TTL_MAX = 3 * 3600
# PTR names checked by FCrDNS before giving up.
DNS_PTR_MAX = 10
# The hosts file read for client names (dns/hosts.py): bytes read at most.
HOSTS_FILE_MAX = 4 * 1024 * 1024

# SMTP client (smtp/client.py). RFC 5321 4.5.3.1.5 bounds a reply line at
# 512 octets; like the LMTP client we accept longer ones from lax servers.
SMTP_REPLY_LINE_MAX = 4096
SMTP_REPLY_LINES_MAX = 100
# RFC 5321 4.5.3.2: client timeouts, applied by the process owning the socket.
SMTP_GREETING_TIMEOUT = 300.0  # 4.5.3.2.1 initial 220: 5 minutes
SMTP_MAIL_TIMEOUT = 300.0  # 4.5.3.2.2 MAIL: 5 minutes
SMTP_RCPT_TIMEOUT = 300.0  # 4.5.3.2.3 RCPT: 5 minutes
SMTP_DATA_INIT_TIMEOUT = 120.0  # 4.5.3.2.4 DATA initiation: 2 minutes
SMTP_DATA_BLOCK_TIMEOUT = 180.0  # 4.5.3.2.5 each data block: 3 minutes
SMTP_DATA_END_TIMEOUT = 600.0  # 4.5.3.2.6 final "." reply: 10 minutes

# STARTTLS / smtps: how long a TLS handshake may take before the session ends.
TLS_HANDSHAKE_TIMEOUT = 30.0
#: worker threads that run the signing step of server TLS handshakes (pony_tls)
TLS_HANDSHAKE_THREADS = 2
#: bytes a client may send while its handshake step runs in a worker
TLS_HELD_MAX = 64 * 1024
#: after our close_notify, how long the client has to send its own (or close)
#: before the connection is cut (RFC 8446 6.1; asyncio's default as well)
TLS_SHUTDOWN_TIMEOUT = 30.0
#: RFC 8446 5.1: a record carries at most 2^14 octets of plaintext; one read
#: of pony's TLS layer asks for one record's worth
TLS_READ_CHUNK = 16 * 1024
#: plaintext encrypted at a time by one write of pony's TLS layer (16 records)
TLS_WRITE_CHUNK = 256 * 1024
#: ciphertext kept for a session that paused reading: past the high mark the
#: socket stops being read, under the low mark it is read again
TLS_READ_HIGH = 256 * 1024
TLS_READ_LOW = 64 * 1024

# SMTP AUTH (RFC 4954 4): a server must take client responses in the AUTH
# exchange of at least 12288 octets, whatever its command line limit; the
# AUTH command line itself (with an initial response) stays under
# COMMAND_LINE_MAX. Postfix smtpd_sasl_response_limit is also 12288. The
# bound below includes the CRLF.
AUTH_LINE_MAX = 12288 + 2
# Failed authentications in one session before 421 4.7.0 (configurable).
AUTH_MAX_FAILURES = 3

# PROXY protocol v2 (listen ... proxy-v2, docs/hostile-input-rules.md): the
# whole header must arrive this many seconds after the connection (HAProxy
# sends it at once; OpenSMTPD allows the session timeout)
PROXY_HEADER_TIMEOUT = 10.0

# -- mta: outgoing connections (after OpenSMTPD's mta limits, docs/config.md §8) --
#: connections open at once to other hosts, in all
MTA_MAX_CONNECTIONS = 100
#: connections open at once for one route (recipient domain or relay host)
MTA_MAX_CONN_PER_ROUTE = 20
#: messages sent over one connection before it is closed (session-mail-max)
MTA_SESSION_MAIL_MAX = 100
#: seconds an idle connection is kept for the next message (session-keepalive)
MTA_SESSION_KEEPALIVE = 10.0
#: TCP connect timeout per address (RFC 5321 4.5.3.2 leaves it to us)
MTA_CONNECT_TIMEOUT = 30.0
#: hosts (MX x addresses) tried for one delivery before giving up for now
MTA_MAX_HOSTS = 10
#: recipients in one outgoing transaction (RFC 5321 4.5.3.1.8: at least 100)
MTA_MAX_RCPT = 100
# -- MTA-STS (RFC 8461, docs/mta-sts.md): pony's policy fetch and cache --
#: policies kept in pony's memory (the least recently used goes first)
MTA_STS_CACHE_MAX = 10000
#: a policy body (RFC 8461 §3.3 leaves it to us; real ones are a few hundred bytes)
MTA_STS_BODY_MAX = 64 * 1024
#: the whole HTTP response: the body and its headers (or chunk framing)
MTA_STS_RESPONSE_MAX = MTA_STS_BODY_MAX + 16 * 1024
#: seconds for one policy fetch, connection to last byte
MTA_STS_FETCH_TIMEOUT = 20.0
#: RFC 8461 §3.2: the longest max_age a policy may ask for (one year)
MTA_STS_MAX_AGE = 31557600
#: mx patterns in one policy
MTA_STS_MX_MAX = 64
#: TXT records lka hands pony for one ``_mta-sts`` name, and their length
MTA_STS_TXT_MAX = 16
MTA_STS_TXT_LEN_MAX = 4096
#: seconds a failed fetch (and no cached policy) is not retried for one domain
MTA_STS_FAIL_HOLD = 60.0
#: messages of one route the queue hands pony in one DeliverBatch (each with
#: its descriptor: at most the 16 of one IPC frame; OpenSMTPD releases a
#: relay's tasks 10 at a time, task-release)
MTA_BATCH_MESSAGES = 10
#: sessions one DeliverBatch uses side by side; each sends its share of the
#: batch's messages one after the other (docs/performance.md, "Relaying")
MTA_BATCH_LANES = 4
#: a delivery-status notification waits this long for more recipients of
#: the same message before it is sent (docs/queue.md §6)
BOUNCE_FLUSH_DELAY = 1.0

# AUTH failures: each failure from one client (an address, an IPv6 /64)
# within the window makes the next attempt from it wait this many seconds
# more, up to the maximum, BEFORE its password is checked, and attempts from
# one client are checked one after the other: guessing cannot make the
# server hash passwords faster than this allows. An attempt that would wait
# longer than the maximum is answered 454 4.7.0 without checking.
AUTH_FAIL_DELAY = 0.5
AUTH_FAIL_DELAY_MAX = 10.0
AUTH_FAIL_WINDOW = 600.0

#: local maildir deliveries of one user that share one delivery process and
#: one sync (proc/parent_mda.py)
DELIVERY_BATCH_MAX = 32
#: delivery processes of one user at a time; its deliveries that arrive
#: meanwhile wait and go together in the next batch
DELIVERY_BATCHES_PER_USER = 2
#: a user's long-lived maildir worker (proc/parent_workers.py) is replaced
#: after this many deliveries, and let go after this many seconds idle
MDA_WORKER_DELIVERIES = 1000
MDA_WORKER_IDLE = 10.0
#: the parent keeps its password and group database answers (uid, gid, home,
#: groups of a system user) this many seconds, for at most this many users
#: (proc/parent_mda.py UserCache)
USER_CACHE_TTL = 2.0
USER_CACHE_MAX = 1024
#: lka keeps the parent's answer about a user's ~/.forward (its content, or
#: none) this many seconds, for at most this many users (proc/lka.py)
FORWARD_CACHE_TTL = 2.0
FORWARD_CACHE_MAX = 1024
#: recipient checks (RCPT) lka expands at once; the others wait as their
#: decoded requests, in order (ipc.channel.Gate; docs/performance.md §1). Well
#: above what a table backend serves at once (table.sdk: 8 threads)
LKA_RCPT_CONCURRENCY = 64

# Worker threads that check password hashes (lka for tables, the parent for
# system users), off the event loop, and the checks that may wait for one
# (queued or running) before new ones get 454 4.7.0 at once.
AUTH_WORKERS = 2
AUTH_PENDING_MAX = 32

# RFC 3030: the largest BDAT chunk the SMTP client sends; smaller messages
# leave as one "BDAT n LAST", bigger ones in chunks of this size.
BDAT_CHUNK_SIZE = 1024 * 1024

# The metrics endpoint (metrics.py, docs/metrics.md): served by control on
# the loopback only, one short HTTP/1.1 request per connection.
#: the request line and headers, at most (a scraper sends a few hundred bytes)
METRICS_REQUEST_MAX = 8192
#: seconds a client has to send its request
METRICS_REQUEST_TIMEOUT = 5.0
#: connections served at once; more are answered 503 and closed
METRICS_CLIENTS_MAX = 8
#: upper bounds (seconds) of the delivery latency histogram's buckets: from
#: a local delivery right after the commit to the 4-day queue lifetime
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                   3600.0, 14400.0, 86400.0, 345600.0)
