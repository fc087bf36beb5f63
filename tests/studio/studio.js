#!/usr/bin/env node
// A stand-in AgentScope Studio (1.0.x) for tether's tests, on the real servers the Studio
// runs: socket.io 4 (default engine options unless told) and tRPC 11 with zod.
//
// What it keeps of the Studio (agentscope-studio packages/server/src, read from its
// source): the tRPC procedures the Python runtime calls, with their semantics
// (registerRun and requestUserInput are upserts by id; requestUserInput and pushMessage
// answer 400 BAD_REQUEST for an unknown run; pushMessage upserts the message by msg.id);
// the /python namespace (auth {run_id}; on ANY disconnect the run's input requests are
// deleted and the run is marked done); the /client namespace (sendUserInputToServer
// deletes the request, sets the run running and broadcasts forwardUserInput(requestId,
// blocksInput, structuredInput) to the whole /python namespace: no room, no ack;
// deleteRuns, as the UI's delete button);
// state on disk, so it survives SIGKILL; SIGTERM/SIGINT close socket.io first, so every
// /python disconnect handler runs (the graceful restart wipes pending requests); at
// start, runs whose pid is gone are marked done and their requests deleted; a busy port
// makes it pick another one (portfinder's range, as the Studio does once the user says
// yes) and write it to --port-file (the Studio's config file).
//
// What it leaves out: the UI, traces, Friday, evaluation; SQLite (a JSON file written on
// every change stands in for it).
//
// Usage: node studio.js --port N [--mode studio|echo] [--state FILE] [--port-file FILE]
//        [--fallback] [--ping-interval MS] [--ping-timeout MS] [--token SECRET]
// Prints "listening PORT" once it accepts connections. Commands on stdin, one a line,
// each answered "ok CMD" on stdout: "close-all CODE" (close every WebSocket with CODE),
// "stop" (stop listening; open connections stay), "start" (listen again), "kick"
// (server-side namespace disconnect of every socket), "wipe RUN" (what a late /python
// disconnect of an old socket of RUN does), "raw TEXT" (send TEXT as a raw
// WebSocket frame to every connection), "emit EVENT JSON-ARGS" (to every socket of the
// mode's namespace), "ask EVENT JSON-ARGS" (the same, asking for an ack; each answer is
// printed as "answered JSON-ARGS").
// Mode "echo" is the transport conformance peer: namespace "/", every event is sent back
// with its arguments and every ack is answered with them; --token requires
// "Authorization: Bearer SECRET" (engine.io answers HTTP 400 otherwise).
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const readline = require('node:readline');
const { Server } = require('socket.io');
const { initTRPC, TRPCError } = require('@trpc/server');
const { createHTTPHandler } = require('@trpc/server/adapters/standalone');
const { z } = require('zod');

function parseArgs(argv) {
    const args = { port: 0, mode: 'studio', state: null, portFile: null, fallback: false,
        pingInterval: null, pingTimeout: null, token: null };
    for (let i = 0; i < argv.length; i++) {
        const key = argv[i];
        const value = argv[i + 1];
        switch (key) {
            case '--port': args.port = Number(value); i++; break;
            case '--mode': args.mode = value; i++; break;
            case '--state': args.state = value; i++; break;
            case '--port-file': args.portFile = value; i++; break;
            case '--fallback': args.fallback = true; break;
            case '--ping-interval': args.pingInterval = Number(value); i++; break;
            case '--ping-timeout': args.pingTimeout = Number(value); i++; break;
            case '--token': args.token = value; i++; break;
            default:
                process.stderr.write(`studio.js: unknown option ${key}\n`);
                process.exit(2);
        }
    }
    return args;
}

const args = parseArgs(process.argv.slice(2));
const Status = { RUNNING: 'running', PENDING: 'pending', DONE: 'done' };

// -- state, on disk like the Studio's SQLite database ------------------------------------

function emptyState() {
    return { runs: {}, inputRequests: {}, replies: {}, messages: {}, calls: {} };
}

let state = emptyState();
if (args.state && fs.existsSync(args.state)) {
    state = JSON.parse(fs.readFileSync(args.state, 'utf8'));
}

function save() {
    if (!args.state) return;
    const tmp = `${args.state}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(state));
    fs.renameSync(tmp, args.state);
}

function counted(procedure) {
    state.calls[procedure] = (state.calls[procedure] || 0) + 1;
}

function pidAlive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch (error) {
        return error.code === 'EPERM';
    }
}

// RunDao.updateRunStatusAtBeginning, then InputRequestDao.updateInputRequests.
for (const run of Object.values(state.runs)) {
    if (run.status !== Status.DONE && !pidAlive(run.pid)) run.status = Status.DONE;
}
for (const [requestId, request] of Object.entries(state.inputRequests)) {
    const run = state.runs[request.runId];
    if (run && run.status === Status.DONE) delete state.inputRequests[requestId];
}
save();

let io = null;

function runRoom(runId) {
    return `run-${runId}`;
}

function inputRequestsOf(runId) {
    return Object.values(state.inputRequests).filter((r) => r.runId === runId);
}

function changeRunStatus(runId, status) {
    const run = state.runs[runId];
    if (!run) return;
    run.status = status;
    save();
    io.of('/client').to(runRoom(runId)).emit('pushRunData', run);
    if (status === Status.DONE) io.of('/client').to(runRoom(runId)).emit('clearInputRequests');
}

// -- tRPC, as packages/server/src/trpc/router.ts -----------------------------------------

const t = initTRPC.create();
const block = z.object({ type: z.string() }).passthrough();

const router = t.router({
    registerRun: t.procedure
        .input(z.object({
            id: z.string(),
            project: z.string(),
            name: z.string(),
            timestamp: z.string(),
            pid: z.number(),
            status: z.enum([Status.RUNNING, Status.PENDING, Status.DONE]),
            run_dir: z.string().optional().nullable(),
        }))
        .mutation(({ input }) => {
            counted('registerRun');
            // RunTable.create({...}).save(): an upsert by primary key.
            state.runs[input.id] = { ...input, run_dir: input.run_dir || '' };
            save();
        }),

    requestUserInput: t.procedure
        .input(z.object({
            requestId: z.string(),
            runId: z.string(),
            agentId: z.string(),
            agentName: z.string(),
            structuredInput: z.record(z.unknown()).nullable(),
        }))
        .mutation(({ input }) => {
            counted('requestUserInput');
            trace(`requestUserInput ${input.requestId}`);
            if (!state.runs[input.runId]) {
                throw new TRPCError({ code: 'BAD_REQUEST',
                    message: `Run with id ${input.runId} does not exist` });
            }
            state.inputRequests[input.requestId] = { ...input };
            save();
            io.of('/client').to(runRoom(input.runId)).emit('pushInputRequests', [input]);
        }),

    pushMessage: t.procedure
        .input(z.object({
            runId: z.string(),
            replyId: z.string().optional().nullable(),
            replyName: z.string().optional().nullable(),
            replyRole: z.string().optional().nullable(),
            msg: z.object({
                id: z.string(),
                name: z.string(),
                role: z.string(),
                content: z.union([z.string(), z.array(block)]),
                metadata: z.unknown(),
                timestamp: z.string(),
            }),
            name: z.string().optional().nullable(),
            role: z.string().optional().nullable(),
        }))
        .mutation(({ input }) => {
            counted('pushMessage');
            if (!state.runs[input.runId]) {
                throw new TRPCError({ code: 'BAD_REQUEST',
                    message: `Run with id ${input.runId} does not exist` });
            }
            const replyId = input.replyId ?? input.msg.id;
            if (!state.replies[replyId]) {
                state.replies[replyId] = { replyId, runId: input.runId,
                    replyName: input.replyName ?? input.name,
                    replyRole: input.replyRole ?? input.role,
                    createdAt: input.msg.timestamp };
            }
            // MessageDao.saveMessage: overwrite the message with this id, or create it.
            const previous = state.messages[input.msg.id];
            state.messages[input.msg.id] = { id: input.msg.id, runId: input.runId, replyId,
                msg: input.msg, order: previous ? previous.order : Object.keys(state.messages).length,
                writes: previous ? previous.writes + 1 : 1 };
            save();
            io.of('/client').to(runRoom(input.runId)).emit('pushMessages', [state.replies[replyId]]);
        }),
});

const trpc = createHTTPHandler({ router, basePath: '/trpc/' });

function onRequest(req, res) {
    if (req.url === '/_test/state' && req.method === 'GET') {
        const connected = io ? [...io.of('/python').sockets.values()].map((s) => s.handshake.auth.run_id) : [];
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ ...state, connected, pid: process.pid }));
        return;
    }
    if (req.url.startsWith('/trpc/')) {
        trpc(req, res);
        return;
    }
    res.writeHead(404);
    res.end();
}

// -- socket.io, as packages/server/src/trpc/socket.ts -----------------------------------

// The /python disconnect handler: InputRequestDao.deleteInputRequestsByRunId, then the
// run is "done". Per run, not per socket: any socket of the run wipes them all.
function trace(what) {
    if (process.env.STUDIO_TRACE) process.stderr.write(`${Date.now() % 100000} ${what}\n`);
}

function wipeRun(runId) {
    trace(`wipe ${runId}: ${inputRequestsOf(runId).map((r) => r.requestId)}`);
    for (const request of inputRequestsOf(runId)) delete state.inputRequests[request.requestId];
    save();
    changeRunStatus(runId, Status.DONE);
}

function studioNamespaces() {
    const python = io.of('/python');
    python.on('connection', (socket) => {
        const runId = socket.handshake.auth.run_id;
        trace(`connect ${runId} ${socket.id}`);
        socket.on('disconnect', (reason) => { trace(`disconnect ${socket.id} ${reason}`); wipeRun(runId); });
    });

    const client = io.of('/client');
    client.on('connection', (socket) => {
        socket.on('joinRunRoom', (runId, callback) => {
            const run = state.runs[runId];
            if (!run) {
                if (typeof callback === 'function') callback({ success: false, message: `Run ${runId} not found` });
                return;
            }
            socket.join(runRoom(runId));
            socket.emit('pushRunData', run);
            socket.emit('pushInputRequests', inputRequestsOf(runId));
        });
        socket.on('deleteRuns', (runIds, callback) => {
            let deleted = 0;
            for (const runId of runIds) {
                if (!state.runs[runId]) continue;
                delete state.runs[runId];  // cascades, as the Studio's foreign keys do
                for (const request of inputRequestsOf(runId)) delete state.inputRequests[request.requestId];
                deleted++;
            }
            save();
            if (typeof callback === 'function') {
                callback({ success: deleted === runIds.length, message: `Deleted ${deleted} runs` });
            }
        });
        socket.on('sendUserInputToServer', (requestId, blocksInput, structuredInput, callback) => {
            const request = state.inputRequests[requestId];
            trace(`answer ${requestId} ${request ? 'found' : 'missing'}`);
            if (!request) {
                if (typeof callback === 'function') {
                    callback({ success: false, message: `Input request ${requestId} not found` });
                }
                return;
            }
            delete state.inputRequests[requestId];
            save();
            if (inputRequestsOf(request.runId).length === 0) changeRunStatus(request.runId, Status.RUNNING);
            io.of('/python').emit('forwardUserInput', requestId, blocksInput, structuredInput);
        });
    });
}

function echoNamespace() {
    io.of('/').on('connection', (socket) => {
        socket.onAny((event, ...rest) => {
            const last = rest[rest.length - 1];
            if (typeof last === 'function') {
                last(...rest.slice(0, -1));
                return;
            }
            socket.emit(event, ...rest);
        });
    });
}

// -- the HTTP server, its port and the controls ------------------------------------------

const httpServer = http.createServer(onRequest);
const engineOptions = { cors: { origin: '*' }, maxHttpBufferSize: args.mode === 'studio' ? Infinity : 1e6 };
if (args.pingInterval !== null) engineOptions.pingInterval = args.pingInterval;
if (args.pingTimeout !== null) engineOptions.pingTimeout = args.pingTimeout;
if (args.token !== null) {
    engineOptions.allowRequest = (req, callback) => {
        callback(null, req.headers.authorization === `Bearer ${args.token}`);
    };
}
io = new Server(httpServer, engineOptions);
if (args.mode === 'studio') studioNamespaces();
else if (args.mode === 'echo') echoNamespace();
else {
    process.stderr.write(`studio.js: unknown mode ${args.mode}\n`);
    process.exit(2);
}
const namespace = args.mode === 'studio' ? '/python' : '/';

function listen(port) {
    return new Promise((resolve, reject) => {
        const onError = (error) => { httpServer.off('listening', onListening); reject(error); };
        const onListening = () => { httpServer.off('error', onError); resolve(httpServer.address().port); };
        httpServer.once('error', onError);
        httpServer.once('listening', onListening);
        httpServer.listen(port, '127.0.0.1');
    });
}

async function listenSomewhere() {
    try {
        return await listen(args.port);
    } catch (error) {
        if (error.code !== 'EADDRINUSE' || !args.fallback) throw error;
    }
    // portfinder from 3000 up to 5000, as the Studio; any free port if all are taken.
    for (let port = 3000; port <= 5000; port++) {
        if (port === args.port) continue;
        try {
            return await listen(port);
        } catch (error) {
            if (error.code !== 'EADDRINUSE') throw error;
        }
    }
    return listen(0);
}

function rawSockets() {
    const sockets = [];
    for (const socket of io.engine.clients ? Object.values(io.engine.clients) : []) {
        if (socket.transport && socket.transport.socket) sockets.push(socket.transport.socket);
    }
    return sockets;
}

let currentPort = null;

function command(line) {
    const [name, ...rest] = line.trim().split(' ');
    const argument = rest.join(' ');
    if (name === 'close-all') {
        for (const ws of rawSockets()) ws.close(Number(argument), 'closed by the test');
    } else if (name === 'stop') {
        httpServer.close();
    } else if (name === 'start') {
        listen(currentPort).then(() => process.stdout.write('ok start\n'));
        return;
    } else if (name === 'wipe') {
        wipeRun(argument);
    } else if (name === 'kick') {
        for (const socket of io.of(namespace).sockets.values()) socket.disconnect();
    } else if (name === 'raw') {
        for (const ws of rawSockets()) ws.send(argument);
    } else if (name === 'ask') {
        const space = argument.indexOf(' ');
        const event = argument.slice(0, space);
        for (const socket of io.of(namespace).sockets.values()) {
            socket.emit(event, ...JSON.parse(argument.slice(space + 1)),
                (...reply) => process.stdout.write(`answered ${JSON.stringify(reply)}\n`));
        }
    } else if (name === 'emit') {
        const space = argument.indexOf(' ');
        const event = argument.slice(0, space);
        io.of(namespace).emit(event, ...JSON.parse(argument.slice(space + 1)));
    } else if (name) {
        process.stdout.write(`error unknown command ${name}\n`);
        return;
    }
    process.stdout.write(`ok ${name}\n`);
}

function shutdown() {
    // SocketManager.close() first: every /python disconnect handler runs.
    io.close();
    httpServer.close(() => process.exit(0));
    // Idle keep-alive HTTP connections would hold close() for Node's 5 s keep-alive
    // timeout (Node 19+ closes them by itself); a shutdown is not what the tests wait for.
    if (httpServer.closeIdleConnections) httpServer.closeIdleConnections();
    setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

listenSomewhere().then((port) => {
    currentPort = port;
    if (args.portFile) {
        fs.mkdirSync(path.dirname(args.portFile), { recursive: true });
        fs.writeFileSync(args.portFile, JSON.stringify({ port }));
    }
    process.stdout.write(`listening ${port}\n`);
    readline.createInterface({ input: process.stdin }).on('line', command);
}, (error) => {
    process.stdout.write(`error ${error.code || error.message}\n`);
    process.exit(1);
});
