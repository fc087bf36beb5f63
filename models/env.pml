/* The environment of the lifecycle model, and its properties. Hand-written.

   Included after a generated core (models/default.pml or any `python -m models.generate`
   output), which defines the states, events, tags, the core's abstract variables and
   handle_event(). Everything here reads the spec only through the generated macros
   (LIVE(s), TRANSPORT(s), FINAL(s), DUE, TIMER_EVENT, ...), so any spec is checked
   against the same properties.

   Four processes, each step guarded by `ev == E_NONE`, so the core handles one event at
   a time, as the driver calls handle() one event at a time:

   Core   handles the event (handle_event(), generated), then the driver performs the
          actions it asked for, as adapters/link.py does in _feed().
   Net    the transport, the server and the driver's reports: a dial is refused, or
          answered (resuming or not, by the server's store and epoch), or never answered
          (a slow handshake); an open transport carries frames, is reset, or freezes
          (half-open); the server crashes keeping or losing its store (a new epoch) and
          restarts; the rebuild hooks finish or raise; an action's reply comes back;
          stray reports arrive from a transport that is gone. And calm: the server comes
          back and stays reachable: from then on no fault, no stall, no user call, and
          every answer the server or driver owes comes before any more time passes.
          Liveness is "after calm, eventually online".
   Clock  time passes in ticks; a tick cannot pass a due deadline: when one is due the
          clock fires the timer event the core would (TIMER_EVENT). It can also stall:
          our own loop was blocked, time jumps past every deadline, and the next heartbeat
          timer fires late (frames buffered meanwhile are handled first).
   User   start, send, close, and the spec's own user events (pause, resume ...).

   Like Lifecycle.handle(), only a frame or the timer itself reaches the core while a
   deadline is due (REPORT). Session mode is modelled (Connected may resume); plain mode
   is the case where every Connected is a new session, which the model covers too.

   Bounds: the store is lost at most MAX_LOST times (epochs 0..MAX_LOST); everything
   else is unbounded (time and faults are abstract, so the state space is finite). */

#ifndef MAX_LOST
#define MAX_LOST 2
#endif
#ifndef STRAYS
#define STRAYS 1
#endif

#define P_NONE 0  /* no transport */
#define P_DIAL 1  /* a dial (connect and handshake) is in progress */
#define P_OPEN 2  /* the transport is open */

byte phys = P_NONE;     /* the transport the driver holds */
bit  closing;           /* an aborted transport still exists until it is released */
bit  rel_owed;          /* the driver owes TransportReleased */
bit  frozen;            /* this transport is half-open: nothing comes back */
bit  broken;            /* this transport broke; its loss was reported */
bit  rebuild_owed;      /* the rebuild hooks are running */
bit  pong_owed;         /* a probe went out on a working transport */
bit  reply_owed;        /* an emitted action awaits its reply */
bit  server_up = 1;
bit  has_session;       /* the server's store holds our session */
byte sepoch;            /* the server's epoch: changes when its store is lost */
byte lost;              /* how many times the store was lost */
/* The truth about silence, kept here and not by the core. */
byte silent;            /* ticks since the link last got a frame (the welcome included) */
byte quiet;             /* same, also counting a finished rebuild or an action's reply */
byte excuse = TIMEOUT + 1;  /* ticks since our own loop woke from a stall (saturates) */
bit  calm;              /* the server is back for good; the user is quiet */
bit  fatal_given;       /* a fatal error or rejection was given: FAILED is then fair */
bit  two_transports;    /* the core dialed while another transport still existed */
bit  timer_stuck;       /* a fired deadline was still due for the same event */

/* -- properties, named after the README's invariants ----------------------------------
   The safety properties are checked as assertions after every step of every process
   (one search checks them all; a violation prints its name first). Liveness is an LTL
   property, checked for acceptance cycles under weak fairness. */

/* No false online: a live state never holds with the peer silent past interval +
   timeout, counting a finished rebuild (or an action's reply) as contact, as the core
   does; after a stall of our own loop, the peer gets a full timeout from the wake. */
#define NO_FALSE_ONLINE (!LIVE(st) || quiet <= BOUND || excuse <= TIMEOUT)

/* The same, counting only frames from the peer: the README's words. Checked only when
   asked (CHECKING bit 8): a known violation, see models/README.md. */
#define NO_FALSE_ONLINE_STRICT (!LIVE(st) || silent <= BOUND || excuse <= TIMEOUT)

/* One transport: the core never dials while a transport exists, and none is open or
   opening in a state not tagged `transport` (idle, closed, failed) or while a backoff
   delay runs. */
#define ONE_TRANSPORT (!two_transports && !refused_dial && \
                       ((TRANSPORT(st) && !BACKOFF_WAIT) || phys == P_NONE))

/* Only declared transitions: the state is declared, every (state, event) pair that
   happens has a row or is IGNORED, and a fired deadline moves. */
#define DECLARED_TRANSITIONS (st < N_STATES && !no_outcome && !timer_stuck)

/* Which safety properties a search checks (a seeded bug checks only its own): bit 1
   no_false_online, 2 one_transport, 4 declared_transitions, 8 no_false_online_strict. */
#ifndef CHECKING
#define CHECKING 7
#endif
#define CHECK(bit, says, cond) \
  if \
  :: (CHECKING & bit) && !(cond) -> printf(says); assert(false) \
  :: else \
  fi
#define INVARIANTS \
  CHECK(1, "VIOLATED no_false_online\n", NO_FALSE_ONLINE); \
  CHECK(2, "VIOLATED one_transport\n", ONE_TRANSPORT); \
  CHECK(4, "VIOLATED declared_transitions\n", DECLARED_TRANSITIONS); \
  CHECK(8, "VIOLATED no_false_online_strict\n", NO_FALSE_ONLINE_STRICT)

/* Liveness: once the server is back for good, the link is eventually online (unless
   the user parked it, or a fatal error ended it: then calm never starts). */
ltl liveness { [] (calm -> <> (st == S_online)) }

/* handle() fires every due deadline before it handles an event, except a frame from
   the peer (MessageReceived, PongReceived), which it handles first: so while a deadline
   is due, only a frame or the timer itself can reach the core. */
#define REPORT (ev == E_NONE && !DUE)

/* Under calm, what the server and driver owe comes before more time passes. */
#define OWED (phys == P_DIAL || rebuild_owed || pong_owed || rel_owed || reply_owed)

/* The driver performs the core's actions (adapters/link.py, Link._perform). */
inline perform_actions() {
  if
  :: a_abort || a_close ->
     if
     :: phys != P_NONE -> closing = 1  /* exists until its tasks end: then released */
     :: else
     fi;
     phys = P_NONE; rel_owed = 1; frozen = 0; broken = 0;
     rebuild_owed = 0; pong_owed = 0; reply_owed = 0  /* the tasks of that transport */
  :: else
  fi;
  if
  :: a_open ->
     if
     :: phys != P_NONE || closing -> two_transports = 1
     :: else
     fi;
     phys = P_DIAL; frozen = 0; broken = 0
  :: else
  fi;
  if
  :: a_rebuild -> rebuild_owed = 1
  :: else
  fi;
  if
  :: a_ping && phys == P_OPEN && server_up && !frozen && !broken -> pong_owed = 1
  :: else
  fi;
  if
  :: a_custom -> reply_owed = 1
  :: else
  fi;
  a_open = 0; a_abort = 0; a_close = 0; a_rebuild = 0; a_ping = 0; a_custom = 0
}

inline count_down(x) {
  if
  :: x != UNSET && x > 0 -> x--
  :: else
  fi
}

inline saturate(x, top) {
  if
  :: x < top -> x++
  :: else
  fi
}

inline maybe_fatal() {
  if
  :: ev_fatal = 0
  :: !calm -> ev_fatal = 1; fatal_given = 1
  fi
}

active proctype Core() {
end_core:
  do
  :: atomic {
       ev != E_NONE ->
       handle_event();
       if
       :: st != src -> parked = (USER_EVENT(ev) && PARKED(st))
       :: else
       fi;
       if  /* Lifecycle._fire_due_deadlines raises on a deadline that keeps firing */
       :: IS_TIMER(ev) && st == src && DUE && TIMER_EVENT == ev -> timer_stuck = 1
       :: else
       fi;
       perform_actions();
       printf("STEP %d %d %d %d %d %d\n", ev, src, st, row, ev_fatal + 2 * ev_resumed, ev_epoch);
       if
       :: IS_TIMER(ev) -> late = 0
       :: else
       fi;
       ev = E_NONE; ev_fatal = 0; ev_resumed = 0; ev_epoch = UNSET; row = 0; src = 0;
       INVARIANTS
     }
  od
}

active proctype Net() {
end_net:
  do
  /* -- the dial in progress -------------------------------------------------------- */
  :: atomic {  /* answered: welcome (session mode resumes if the store kept us) */
       REPORT && phys == P_DIAL && server_up ->
       phys = P_OPEN; ev = E_Connected;
       if
       :: SESSION -> ev_resumed = has_session; ev_epoch = sepoch
       :: else
       fi;
       has_session = 1; silent = 0; quiet = 0;
       INVARIANTS
     }
  :: atomic {  /* refused: TCP, HTTP status, handshake error frame */
       REPORT && phys == P_DIAL && !calm ->
       phys = P_NONE; ev = E_ConnectFailed; maybe_fatal();
       INVARIANTS
     }
  /* (a slow handshake: no answer at all; the core's handshake deadline fires) */
  /* -- frames on an open, working transport -------------------------------------- */
  :: atomic {
       ev == E_NONE && phys == P_OPEN && server_up && !frozen && !broken && (!calm || pong_owed) ->
       ev = E_PongReceived; pong_owed = 0; silent = 0; quiet = 0;
       INVARIANTS
     }
  :: atomic {
       ev == E_NONE && phys == P_OPEN && server_up && !frozen && !broken && !calm ->
       ev = E_MessageReceived; silent = 0; quiet = 0;
       INVARIANTS
     }
  :: atomic { REPORT && phys == P_OPEN && !broken && !calm -> ev = E_MessagesWritten; INVARIANTS }
  :: atomic { REPORT && phys == P_OPEN && !broken && !calm -> ev = E_MessagesAcked; INVARIANTS }
  /* -- the driver's reports ------------------------------------------------------------ */
#ifndef BUG_EARLY_RELEASE
  :: atomic { REPORT && rel_owed -> rel_owed = 0; closing = 0; ev = E_TransportReleased; INVARIANTS }
#else
  /* seeded bug: the release is reported before the old transport's tasks are gone */
  :: atomic { REPORT && rel_owed -> rel_owed = 0; ev = E_TransportReleased; INVARIANTS }
  :: atomic { ev == E_NONE && closing && !rel_owed -> closing = 0; printf("ENV old transport gone\n"); INVARIANTS }
#endif
  :: atomic { REPORT && rebuild_owed -> rebuild_owed = 0; quiet = 0; ev = E_Rebuilt; INVARIANTS }
  :: atomic { REPORT && rebuild_owed && !calm -> rebuild_owed = 0; ev = E_RebuildFailed; INVARIANTS }
  :: atomic {
       REPORT && reply_owed && HAS_REPLY_OK -> reply_owed = 0; quiet = 0; reply_ok_event();
       INVARIANTS
     }
  :: atomic {
       REPORT && reply_owed && HAS_REPLY_FATAL && !calm ->
       reply_owed = 0; fatal_given = 1; reply_fatal_event();
       INVARIANTS
     }
  /* -- faults ---------------------------------------------------------------------- */
  :: atomic {  /* reset, close frame, protocol error: the reader reports the loss */
       REPORT && phys == P_OPEN && !broken && !calm ->
       broken = 1; pong_owed = 0; ev = E_TransportLost; maybe_fatal();
       INVARIANTS
     }
  :: atomic {  /* the peer freezes: the transport stays open and silent (half-open) */
       ev == E_NONE && phys == P_OPEN && !frozen && !calm ->
       frozen = 1; pong_owed = 0; printf("ENV freeze\n");
       INVARIANTS
     }
  :: atomic {  /* the server crashes, its store survives (durable) */
       ev == E_NONE && server_up && !calm ->
       server_up = 0; frozen = (phys == P_OPEN); pong_owed = 0; printf("ENV crash kept\n");
       INVARIANTS
     }
  :: atomic {  /* the server crashes and loses its store: a new epoch */
       ev == E_NONE && server_up && !calm && lost < MAX_LOST ->
       server_up = 0; frozen = (phys == P_OPEN); pong_owed = 0;
       has_session = 0; sepoch++; lost++; printf("ENV crash lost\n");
       INVARIANTS
     }
  :: atomic { ev == E_NONE && !server_up -> server_up = 1; printf("ENV restart\n"); INVARIANTS }
  /* -- stray reports: from a transport that is gone (the driver's generation filter let
        one through); each kind only while its real source does not exist ------------ */
  :: atomic { STRAYS && REPORT && !calm && phys != P_DIAL -> ev = E_Connected; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && phys != P_DIAL -> ev = E_ConnectFailed; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && !rebuild_owed -> ev = E_Rebuilt; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && !rebuild_owed -> ev = E_RebuildFailed; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && !rel_owed -> ev = E_TransportReleased; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && phys != P_OPEN -> ev = E_TransportLost; INVARIANTS }
  :: atomic { STRAYS && ev == E_NONE && !calm && phys != P_OPEN -> ev = E_PongReceived; INVARIANTS }
  :: atomic { STRAYS && ev == E_NONE && !calm && phys != P_OPEN -> ev = E_MessageReceived; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && phys != P_OPEN -> ev = E_MessagesWritten; INVARIANTS }
  :: atomic { STRAYS && REPORT && !calm && phys != P_OPEN -> ev = E_MessagesAcked; INVARIANTS }
  /* -- calm: the server comes back and stays reachable --------------------------------- */
  :: atomic {
       ev == E_NONE && !calm && !parked && !fatal_given ->
       calm = 1; server_up = 1; printf("ENV calm\n");
       INVARIANTS
     }
  od
}

active proctype Clock() {
end_clock:
  do
  :: atomic {  /* one tick: never past a due deadline */
       ev == E_NONE && !DUE && !(calm && OWED) ->
       late = 0;
       saturate(lh, BOUND);
       count_down(pd); count_down(hd); count_down(da);
       saturate(silent, BOUND + 1); saturate(quiet, BOUND + 1);
       saturate(excuse, TIMEOUT + 1);
       if
       :: online_since -> saturate(up, GRACE)
       :: else
       fi;
       printf("TICK\n");
       INVARIANTS
     }
  :: atomic {  /* the driver's timer: the core fires the due deadline */
       ev == E_NONE && DUE -> ev = TIMER_EVENT;
       INVARIANTS
     }
  :: atomic {  /* our own loop stalls: time jumps past every deadline */
       ev == E_NONE && !calm ->
       late = 1; lh = BOUND; silent = BOUND + 1; quiet = BOUND + 1; excuse = 0;
       if
       :: pd != UNSET -> pd = 0
       :: else
       fi;
       if
       :: hd != UNSET -> hd = 0
       :: else
       fi;
       if
       :: da != UNSET -> da = 0
       :: else
       fi;
       if
       :: online_since -> up = GRACE
       :: else
       fi;
       printf("ENV stall\n");
       INVARIANTS
     }
  od
}

active proctype User() {
end_user:
  do
  :: atomic { REPORT && !calm -> ev = E_Started; INVARIANTS }
  :: atomic { REPORT && !calm -> ev = E_SendRequested; INVARIANTS }
  :: atomic { REPORT && !calm -> ev = E_CloseRequested; INVARIANTS }
  :: atomic { REPORT && !calm && HAS_USER_CUSTOM -> user_custom_event(); INVARIANTS }
  /* the core raised on a driver's report (a callback's bug): the driver fails the link */
  :: atomic { REPORT && !calm && HAS_CRASH -> crash_event(); fatal_given = 1; INVARIANTS }
  od
}
