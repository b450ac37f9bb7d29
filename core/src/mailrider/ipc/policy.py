"""Which message types each process accepts from each peer.

A channel checks the type of every frame against its row of :data:`ACCEPTS`
before it decodes the rest of the frame (:mod:`mailrider.ipc.channel`); a
type outside the row is a protocol violation by the peer and closes the
channel, which takes the daemon down as OpenSMTPD's ``fatalx`` does. Rows
list requests and notices the receiver serves *and* the replies it may get
to its own requests: nothing else reaches a handler or a waiting caller.

The rows follow from the roles (docs/processes.md, docs/security.md): pony,
the network-facing process, may only ask the queue to create, commit and
roll back its own messages, ask lka about rules, lookups and filters, and
klondike for TLS and DKIM signatures; it asks the parent for nothing, and can
remove, expire, pause or schedule nothing. Local deliveries go from the
queue to the parent, sealed by lka.
"""

from __future__ import annotations

#: answers every process may get to a request it made (an error reply is an ``Error``)
_GENERIC = frozenset({"Ok", "Error"})

_CONTROL_REPLY = frozenset({"ControlReply"})

ACCEPTS: dict[tuple[str, str], frozenset[str]] = {
    # (receiver, sender): type names
    ("parent", "pony"): frozenset(),
    ("parent", "lka"): frozenset({"ForwardOpen", "AuthCheck", "FilterStart", "TableStart"}),
    ("parent", "control"): frozenset({"Control"}),
    ("parent", "queue"): frozenset({"ForkDelivery", "ForkDeliveries"}),
    ("parent", "scheduler"): frozenset(),
    ("parent", "klondike"): frozenset(),
    ("lka", "parent"): frozenset({"GrantKey", "ForwardContent", "AuthResult"}),
    ("lka", "pony"): frozenset({
        "RcptCheck", "PeerLookup", "MxResolve", "MtaLookup", "AuthCheck", "SendersCheck",
        "TlsaLookup", "StsTxt", "FilterBegin", "FilterPhase", "FilterReport", "FilterDataBegin",
        "FilterData",
        "FilterEnd",
    }),
    ("lka", "queue"): frozenset({"RcptCheck"}),
    ("lka", "control"): frozenset({"Control"}),
    ("pony", "parent"): frozenset({"LocalSession"}),
    ("pony", "lka"): frozenset({
        "FilterData", "RcptResult", "PeerInfo", "MxResult", "FilterDecision", "AuthResult",
        "TlsaResult", "StsTxtResult",
    }),
    ("pony", "queue"): frozenset({"DeliverBatch", "MessageCreated"}),
    ("pony", "control"): frozenset({"LocalSession", "Control"}),
    ("pony", "klondike"): frozenset({"Signed"}),
    ("queue", "pony"): frozenset({
        "MessageCreate", "MessageCommit", "MessageRollback", "DeliveryResult",
        "DeliveryResults",
    }),
    ("queue", "scheduler"): frozenset({"SchedDue"}),
    ("queue", "lka"): frozenset({"RcptResult"}),
    ("queue", "parent"): frozenset({"DeliveryResult", "DeliveryResults", "QueueKey"}),
    ("queue", "control"): frozenset({"Control"}),
    ("scheduler", "queue"): frozenset({"SchedInsert", "SchedResult", "SchedResults"}),
    ("scheduler", "control"): frozenset({"Control"}),
    ("scheduler", "parent"): frozenset(),
    ("control", "lka"): _CONTROL_REPLY,
    ("control", "queue"): _CONTROL_REPLY,
    ("control", "scheduler"): _CONTROL_REPLY,
    ("control", "pony"): _CONTROL_REPLY,
    ("control", "klondike"): _CONTROL_REPLY,
    ("control", "parent"): _CONTROL_REPLY,
    ("klondike", "pony"): frozenset({"Sign", "DkimSign"}),
    ("klondike", "control"): frozenset({"Control"}),
    ("klondike", "parent"): frozenset(),
}


def accepts(receiver: str, sender: str) -> frozenset[str]:
    """The type names ``receiver`` takes from ``sender`` (nothing for an unknown pair)."""
    return ACCEPTS.get((receiver, sender), frozenset()) | _GENERIC
