/* The session protocol of models/PROTOCOL.md: a client and a server over a connection
   that can be cut at any point, and a server that crashes keeping or losing its store.
   Hand-written; the client mirrors fsm/outbox.py (Outbox: pending and in-flight deques,
   take, take_replays, ack, rewind, new_session, push_urgent), fsm/session.py (Receiver)
   and the session rows of fsm/lifecycle.py (resume_session, start_rebuild,
   finish_rebuild); the server mirrors adapters/hub.py.

   Bounds (stated in models/README.md): the client sends N_USER messages, the server's
   application K_SERVER per session; at most MAX_FAULTS faults in all: cuts (at most
   MAX_CUTS) and crashes (at most MAX_CRASH, each keeping or losing the store); channels
   hold CHAN frames each way (enough for everything in flight: a send never blocks).
   The connection is FIFO and lossless while it lives; a cut loses everything in flight
   both ways, except the first frame the server may already have received, which its old
   handler may read late (that is where duplicates come from). Both ends see a cut; the
   lifecycle model covers who notices when.

   Seeded bugs (`-DBUG_...`, run by `make verify`) each break one property. */

#ifndef N_USER
#define N_USER 2
#endif
#ifndef K_SERVER
#define K_SERVER 1
#endif
#ifndef MAX_CUTS
#define MAX_CUTS 2
#endif
#ifndef MAX_CRASH
#define MAX_CRASH 2
#endif
#ifndef MAX_FAULTS
#define MAX_FAULTS 2   /* cuts and crashes together (--deep: 3) */
#endif
#define CHAN 8
#define CAP 8          /* outbox entries: user messages plus rebuild messages */
#define R_ID (N_USER + 1)  /* the rebuild hook's message ("register"), resent per rebuild */

/* frame types */
#define HELLO   1   /* (HELLO, session id or 0, ack, -) */
#define WELCOME 2   /* (WELCOME, session id, ack, epoch) */
#define MSG     3   /* (MSG, seq, ack, payload id) */
#define ACK     4   /* (ACK, -, ack, -) */

chan c2s = [CHAN] of { byte, byte, byte, byte };
/* A msg frame an old, cut connection had already received: its handler on the server
   may still read it after the client is back on a new connection. Duplicates come from
   here (the welcome's ack could not count it). One such frame at a time. */
byte late_seq, late_id;
chan s2c = [CHAN] of { byte, byte, byte, byte };

/* -- the client ------------------------------------------------------------------------ */
#define DOWN 0        /* no connection: stale / recovering */
#define DIALING 1     /* hello sent, waiting for welcome */
#define REBUILDING 2  /* the rebuild hooks run */
#define LIVE 3        /* online: the outbox flows */

typedef Entry { byte id; byte wire }  /* an Envelope: payload id, wire number (0: none) */
Entry pend[CAP]; byte npend;          /* Outbox._pending */
Entry infl[CAP]; byte ninfl;          /* Outbox._inflight */
byte next_wire = 1;                   /* Outbox._next_wire */
byte cst = DOWN;
byte sent;                            /* user messages sent so far (ids 1..sent) */
byte held[N_USER + 1];                /* how many envelopes of each user message are held */
byte c_sid;                           /* ClientSession.session_id; 0: none */
byte c_last;                          /* ClientSession.receiver.last */
byte c_epoch = 255;                   /* Lifecycle._epoch */
byte c_rebuilt = 255;                 /* Lifecycle._rebuilt_epoch */
bit  r_sent;                          /* this rebuild's message went out */
bit  c_owes;                          /* the client owes the server an ack */
byte cuts;
byte c_app_last;                      /* last server message delivered to the client app */
byte c_app[K_SERVER + 1];             /* deliveries of each server message, this session */

/* -- the server ---------------------------------------------------------------------------- */
bit  s_conn;                          /* a connection is attached after its hello */
bit  s_known;                         /* the store holds the session */
byte s_sid;                           /* its id (a new one per new session) */
bit  s_resumed;                       /* the last welcome resumed */
byte s_epoch;
byte s_last;                          /* highest client seq delivered (Receiver.last) */
Entry sout[CAP]; byte nsout;          /* the server's unacknowledged messages */
byte s_next_wire = 1;
byte s_sent;                          /* server app messages produced */
bit  s_owes;                          /* the server owes the client an ack */
byte crashes;
/* what the handler saw, this session (a new session comes only with a new epoch) */
byte deliv[N_USER + 1];               /* deliveries of each user message */
bit  ever[N_USER + 1];                /* delivered to the handler in some epoch */
byte last_user;                       /* last user message delivered */
bit  reg_seen;                        /* the rebuild's message was delivered */

/* -- property flags ------------------------------------------------------------------------ */
bit dup;                  /* a message delivered twice within one epoch */
bit disorder;             /* delivered out of send order within one epoch */
bit gap;                  /* a receiver saw a gap: protocol error `gap` */
bit s_lost;               /* the server forgot an acknowledged message never delivered */
bit rebuilt_twice;        /* a rebuild finished twice in one epoch */
bit held_before_rebuild;  /* a held message reached the handler before the rebuild's */

#define NOLOSS(m) ((m) > sent || ever[m] || held[m] > 0)
#if N_USER == 2
#define NOLOSS_ALL (NOLOSS(1) && NOLOSS(2))
#else
#define NOLOSS_ALL (NOLOSS(1) && NOLOSS(2) && NOLOSS(3))
#endif

/* -- properties, named after the README's session-mode promises ------------------------
   Checked as assertions at the end of every step (one search checks all four; a
   violation prints its name before the assertion fails). */

/* Nothing lost: every message sent is delivered to the handler or still held by the
   client; the server forgets none of its own before the client got it. */
#define SESSION_NO_LOSS (NOLOSS_ALL && !s_lost)
/* Nothing doubled while the store survives: within one session (a new session comes
   only with a new epoch), each message reaches the handler, and each server message the
   client's application, at most once. */
#define SESSION_NO_DUP (!dup)
/* In order: within one session, in send order both ways, and never a gap. */
#define SESSION_IN_ORDER (!disorder && !gap)
/* Rebuild once: the rebuild finishes at most once per epoch, and its message reaches
   the handler before any held message of that session. */
#define REBUILD_ONCE_FIRST (!rebuilt_twice && !held_before_rebuild)

/* -- deque helpers (cpp macros: Promela inlines cannot take an array) ----------------- */
#define POP_FRONT(q, n) \
  i = 0; \
  do \
  :: i + 1 < n -> q[i].id = q[i + 1].id; q[i].wire = q[i + 1].wire; i++ \
  :: else -> break \
  od; \
  n--; q[n].id = 0; q[n].wire = 0

#define PUSH_BACK(q, n, m, w) \
  assert(n < CAP); q[n].id = m; q[n].wire = w; n++

/* an envelope leaves the outbox */
#define FORGET(m) \
  if \
  :: (m) != R_ID -> held[m] = held[m] - 1 \
  :: else \
  fi

#define TRANSMIT(m, w) \
  assert(nfull(c2s)); c2s!MSG, w, c_last, m; c_owes = 0; \
  printf("C > msg %d seq %d\n", m, w)

/* Outbox.ack(upto): forget everything up to wire `upto`, in flight or rewound */
inline c_ack(upto) {
  do
  :: ninfl > 0 && infl[0].wire <= upto -> FORGET(infl[0].id); POP_FRONT(infl, ninfl)
  :: else -> break
  od;
  do
  :: ninfl == 0 && npend > 0 && pend[0].wire != 0 && pend[0].wire <= upto ->
     FORGET(pend[0].id); POP_FRONT(pend, npend)
  :: else -> break
  od
}

/* Outbox.rewind(): unsettled messages go back in front, keeping their wire numbers */
inline rewind() {
#ifdef BUG_DROP_INFLIGHT
  do  /* seeded bug: the dead transport's unsettled messages are dropped, not rewound */
  :: ninfl > 0 -> FORGET(infl[0].id); POP_FRONT(infl, ninfl)
  :: else -> break
  od
#elif defined(BUG_REWIND_BEHIND)
  /* seeded bug: unsettled messages go back behind the pending ones */
  i = 0;
  do
  :: i < ninfl -> PUSH_BACK(pend, npend, infl[i].id, infl[i].wire); infl[i].id = 0;
                  infl[i].wire = 0; i++
  :: else -> break
  od;
  ninfl = 0
#else
  j = ninfl + npend; assert(j <= CAP);
  i = npend;
  do  /* shift pending right by ninfl */
  :: i > 0 -> i--; pend[i + ninfl].id = pend[i].id; pend[i + ninfl].wire = pend[i].wire
  :: else -> break
  od;
  i = 0;
  do
  :: i < ninfl -> pend[i].id = infl[i].id; pend[i].wire = infl[i].wire;
                  infl[i].id = 0; infl[i].wire = 0; i++
  :: else -> break
  od;
  npend = j; ninfl = 0
#endif
}

/* Outbox.new_session(): every held user message waits again, in send order, with no
   wire number; rebuild messages of the old session are dropped */
inline new_session() {
  k = 1;  /* user ids are send order */
  do
  :: k <= N_USER ->
     i = 0;
     do
     :: i < npend -> if :: pend[i].id == k -> tmp_q[ntmp].id = k; ntmp++ :: else fi; i++
     :: else -> break
     od;
     i = 0;
     do
     :: i < ninfl -> if :: infl[i].id == k -> tmp_q[ntmp].id = k; ntmp++ :: else fi; i++
     :: else -> break
     od;
     k++
  :: else -> break
  od;
  i = 0;
  do
  :: i < CAP -> pend[i].id = 0; pend[i].wire = 0; infl[i].id = 0; infl[i].wire = 0; i++
  :: else -> break
  od;
  i = 0;
  do
  :: i < ntmp -> pend[i].id = tmp_q[i].id; pend[i].wire = 0; tmp_q[i].id = 0; i++
  :: else -> break
  od;
  npend = ntmp; ninfl = 0; ntmp = 0; next_wire = 1
}

/* Outbox.take_replays(): pending messages that carry a wire number go out again */
inline take_replays() {
  do
  :: npend > 0 && pend[0].wire != 0 ->
     TRANSMIT(pend[0].id, pend[0].wire);
     PUSH_BACK(infl, ninfl, pend[0].id, pend[0].wire); POP_FRONT(pend, npend)
  :: else -> break
  od
}

/* the handler gets a client message (adapters/hub.py) */
inline handler_deliver(m) {
  if
  :: m == R_ID -> reg_seen = 1
  :: else ->
     ever[m] = 1;
     if
     :: !reg_seen -> held_before_rebuild = 1
     :: else
     fi;
     if
     :: deliv[m] > 0 -> dup = 1
     :: else -> deliv[m] = 1
     fi;
     if
     :: m < last_user -> disorder = 1; printf("DISORDER handler\n")
     :: else -> last_user = m
     fi
  fi
}

/* the client's application gets a server message */
inline app_deliver(m) {
  if
  :: c_app[m] > 0 -> dup = 1
  :: else -> c_app[m] = 1
  fi;
  if
  :: m < c_app_last -> disorder = 1; printf("DISORDER app\n")
  :: else -> c_app_last = m
  fi
}

/* the server forgets what the client acknowledged */
inline s_ack(upto) {
  do
  :: nsout > 0 && sout[0].wire <= upto ->
     if
     :: c_app[sout[0].id] == 0 -> s_lost = 1
     :: else
     fi;
     POP_FRONT(sout, nsout)
  :: else -> break
  od
}

inline drain(c) {
  do
  :: c?_, _, _, _
  :: empty(c) -> break
  od
}

/* the connection dies: both ends see it; the client aborts (Lifecycle.abort_transport) */
inline cut(keep_head) {
  if
  :: keep_head && c2s?[MSG, _, _, _] && late_seq == 0 ->  /* the server had received it */
     c2s?MSG, late_seq, b, late_id
  :: else
  fi;
  drain(c2s); drain(s2c);
  s_conn = 0;
  if
  :: cst != DOWN -> rewind(); cst = DOWN; r_sent = 0
  :: else
  fi
}

/* scratch registers, cleared at the end of every step so they never tell states apart */
byte i, j, k, a, b, c;
Entry tmp_q[CAP]; byte ntmp;
/* Which properties a search checks (a seeded bug checks only its own): bit 1
   session_no_loss, 2 session_no_dup, 4 session_in_order, 8 rebuild_once_first. */
#ifndef CHECKING
#define CHECKING 15
#endif
#define CHECK(bit, says, cond) \
  if \
  :: (CHECKING & bit) && !(cond) -> printf(says); assert(false) \
  :: else \
  fi
#define CLEAN i = 0; j = 0; k = 0; a = 0; b = 0; c = 0; \
  CHECK(1, "VIOLATED session_no_loss\n", SESSION_NO_LOSS); \
  CHECK(2, "VIOLATED session_no_dup\n", SESSION_NO_DUP); \
  CHECK(4, "VIOLATED session_in_order\n", SESSION_IN_ORDER); \
  CHECK(8, "VIOLATED rebuild_once_first\n", REBUILD_ONCE_FIRST)

active proctype Client() {
end_client:
  do
  :: d_step {  /* the user sends a message; it waits in the outbox */
       sent < N_USER -> sent++; held[sent]++; PUSH_BACK(pend, npend, sent, 0);
       printf("C send(%d): queued\n", sent);
       CLEAN
     }
  :: d_step {  /* dial: hello (resume if we hold a session) */
       cst == DOWN -> c2s!HELLO, c_sid, c_last, 0; cst = DIALING;
       printf("C > hello session %d ack %d\n", c_sid, c_last);
       CLEAN
     }
  :: d_step {
       cst == DIALING && s2c?[WELCOME, _, _, _] -> s2c?WELCOME, a, b, c;
       if
#ifdef BUG_REBUILD_ON_RESUME
       :: false ->  /* seeded bug: every resume runs the rebuild again */
#else
       :: a == c_sid && c == c_rebuilt ->          /* resume_session: no rebuild */
#endif
          printf("C < welcome: resumed, epoch %d rebuilt: online\n", c);
          c_ack(b); c_epoch = c; cst = LIVE
#ifdef BUG_REBUILD_ON_RESUME
       :: a == c_sid ->
#else
       :: a == c_sid && c != c_rebuilt ->          /* start_rebuild: resumed, rebuild unfinished */
#endif
          printf("C < welcome: resumed, epoch %d not rebuilt: replay, rebuild\n", c);
          c_ack(b); take_replays(); c_epoch = c; cst = REBUILDING
       :: a != c_sid ->                   /* start_rebuild: a new session */
          printf("C < welcome: new session, epoch %d: rebuild\n", c);
          c_sid = a; c_last = 0; new_session(); c_epoch = c; cst = REBUILDING;
          i = 0;
          do
          :: i <= K_SERVER -> c_app[i] = 0; i++
          :: else -> break
          od;
          c_app_last = 0
       fi;
       CLEAN
     }
  :: d_step {  /* the rebuild hook sends its message, urgent: out at once */
       cst == REBUILDING && !r_sent ->
       printf("C rebuild hook: register\n");
       TRANSMIT(R_ID, next_wire); PUSH_BACK(infl, ninfl, R_ID, next_wire); next_wire++;
       r_sent = 1;
       CLEAN
     }
  :: d_step {  /* Rebuilt: finish_rebuild, online */
       cst == REBUILDING && r_sent ->
       if
       :: c_rebuilt == c_epoch -> rebuilt_twice = 1
       :: else
       fi;
       c_rebuilt = c_epoch; r_sent = 0; cst = LIVE; printf("C rebuilt: online\n");
       CLEAN
     }
  :: d_step {  /* the outbox flows: take one pending message, stamping its wire number */
#ifdef BUG_FLOW_DURING_REBUILD
       (cst == LIVE || cst == REBUILDING) && npend > 0 ->
#else
       cst == LIVE && npend > 0 ->
#endif
       if
       :: pend[0].wire == 0 -> pend[0].wire = next_wire; next_wire++
       :: else
       fi;
       TRANSMIT(pend[0].id, pend[0].wire);
       PUSH_BACK(infl, ninfl, pend[0].id, pend[0].wire); POP_FRONT(pend, npend);
       CLEAN
     }
  :: d_step {  /* a frame from the server */
       (cst == REBUILDING || cst == LIVE) && s2c?[MSG, _, _, _] -> s2c?MSG, a, b, c;
       c_ack(b); c_owes = 1;
       if
       :: a == c_last + 1 -> c_last++; app_deliver(c); printf("C < msg S%d seq %d: delivered\n", c, a)
       :: a <= c_last -> printf("C < msg S%d seq %d: duplicate, dropped\n", c, a)
       :: else -> gap = 1; printf("GAP\n")
       fi;
       CLEAN
     }
  :: d_step { (cst == REBUILDING || cst == LIVE) && s2c?[ACK, _, _, _] -> s2c?ACK, a, b, c; c_ack(b); CLEAN }
  :: d_step {  /* a standalone ack, when one is owed */
       (cst == REBUILDING || cst == LIVE) && c_owes && nfull(c2s) ->
       c2s!ACK, 0, c_last, 0; c_owes = 0;
       CLEAN
     }
  od
}

active proctype Server() {
end_server:
  do
  :: d_step {
       c2s?[HELLO, _, _, _] -> c2s?HELLO, a, b, c;
       if
       :: s_known && a == s_sid ->        /* resume: replay what the client lacks */
          s_ack(b); s2c!WELCOME, s_sid, s_last, s_epoch;
          printf("S > welcome resumed epoch %d ack %d\n", s_epoch, s_last);
          i = 0;
          do
          :: i < nsout -> s2c!MSG, sout[i].wire, s_last, sout[i].id;
             printf("S > msg S%d seq %d (replay)\n", sout[i].id, sout[i].wire); i++
          :: else -> break
          od
       :: else ->                         /* a new session, numbered from 1 both ways */
          s_known = 1; s_sid++; s_last = 0; nsout = 0; s_next_wire = 1; s_sent = 0;
          late_seq = 0; late_id = 0;  /* a frame of an old session is refused */
          i = 0;
          do
          :: i <= N_USER -> deliv[i] = 0; i++
          :: else -> break
          od;
          last_user = 0; reg_seen = 0;
          s2c!WELCOME, s_sid, 0, s_epoch;
          printf("S > welcome new session epoch %d\n", s_epoch)
       fi;
       s_conn = 1;
       CLEAN
     }
  :: d_step {
       s_conn && c2s?[MSG, _, _, _] -> c2s?MSG, a, b, c;
       s_ack(b); s_owes = 1;
       if
       :: a == s_last + 1 -> s_last++; handler_deliver(c); printf("S < msg %d seq %d: delivered\n", c, a)
#ifdef BUG_NO_DEDUPE
       :: a <= s_last -> handler_deliver(c); printf("S < msg %d seq %d: delivered again\n", c, a)  /* seeded bug */
#else
       :: a <= s_last -> printf("S < msg %d seq %d: duplicate, dropped\n", c, a)
#endif
       :: else -> gap = 1; printf("GAP\n")
       fi;
       CLEAN
     }
  :: d_step { s_conn && c2s?[ACK, _, _, _] -> c2s?ACK, a, b, c; s_ack(b); CLEAN }
  :: d_step {  /* the old connection's handler reads the frame it had received */
       s_known && late_seq != 0 -> a = late_seq; c = late_id; late_seq = 0; late_id = 0;
       if
       :: a == s_last + 1 -> s_last++; handler_deliver(c); printf("S < late msg %d seq %d: delivered\n", c, a)
#ifdef BUG_NO_DEDUPE
       :: a <= s_last -> handler_deliver(c); printf("S < late msg %d seq %d: delivered again\n", c, a)
#else
       :: a <= s_last -> printf("S < late msg %d seq %d: duplicate, dropped\n", c, a)
#endif
       :: else -> gap = 1; printf("GAP\n")
       fi;
       CLEAN
     }
  :: d_step {  /* the server's application sends a message to the client */
       s_known && s_sent < K_SERVER ->
       s_sent++; PUSH_BACK(sout, nsout, s_sent, s_next_wire); s_next_wire++;
       if
       :: s_conn -> s2c!MSG, s_next_wire - 1, s_last, s_sent; s_owes = 0;
          printf("S > msg S%d seq %d\n", s_sent, s_next_wire - 1)
       :: else
       fi;
       CLEAN
     }
  :: d_step { s_conn && s_owes && nfull(s2c) -> s2c!ACK, 0, s_last, 0; s_owes = 0; CLEAN }
  od
}

active proctype Faults() {
end_faults:
  do
  :: d_step {  /* the connection is cut: every frame in flight is lost */
       cuts < MAX_CUTS && cuts + crashes < MAX_FAULTS && (cst != DOWN || s_conn) ->
       cuts++; cut(0); printf("ENV connection cut\n"); CLEAN
     }
  :: d_step {  /* the same, but the server had received the first frame in flight */
       cuts < MAX_CUTS && cuts + crashes < MAX_FAULTS && late_seq == 0 && c2s?[MSG, _, _, _] ->
       cuts++; cut(1); printf("ENV connection cut (the server had read msg seq %d)\n", late_seq);
       CLEAN
     }
  :: d_step {  /* crash and restart, the store kept (SQLite) */
       crashes < MAX_CRASH && cuts + crashes < MAX_FAULTS ->
       crashes++; cut(0); late_seq = 0; late_id = 0; printf("ENV server crash, store kept\n");
       CLEAN
     }
  :: d_step {  /* crash and restart, the store lost (memory): a new epoch */
       crashes < MAX_CRASH && cuts + crashes < MAX_FAULTS ->
       crashes++; cut(0); late_seq = 0; late_id = 0; printf("ENV server crash, store lost\n");
       s_known = 0; s_last = 0; nsout = 0; s_next_wire = 1; s_epoch++;
       CLEAN
     }
  od
}
