/*
 * ws4redis.js: the browser client of twisted_ws4redis (and of ws4redis).
 *
 * Plain JavaScript, no dependencies. Load it with a script tag (it defines
 * window.WS4Redis), require() it, or import ws4redis.mjs beside it.
 *
 * Two clients, one per wire.
 *
 * 1. WS4Redis(options): the ws4redis client. One socket, the subscriptions
 *    its URL names, raw messages both ways.
 *
 *   var ws4redis = WS4Redis({
 *       uri: '{{ WEBSOCKET_URI }}foobar?subscribe-broadcast&publish-broadcast',
 *       heartbeat_msg: {{ WS4REDIS_HEARTBEAT }},
 *       connected: function () { ws4redis.send_message('Hello'); },
 *       receive_message: function (data) { ... },
 *   });
 *
 * Options (the ws4redis ones, plus three tunables):
 *   uri                 websocket URL (required)
 *   connecting()        called before each connection attempt
 *   connected()         called when the socket is open
 *   receive_message(d)  called with each message; never with a heartbeat
 *   disconnected(evt)   called with the close event whenever the socket closes
 *   heartbeat_msg       the server's WS4REDIS_HEARTBEAT, or null for none
 *   heartbeat_interval  seconds between heartbeats sent to the server (5)
 *   max_reconnect_delay longest wait before reconnecting, in seconds (30)
 *   binary_type         'arraybuffer' (default) or 'blob', for binary messages
 * Methods: send_message(msg), close(), get_state(), is_connecting(),
 * is_connected(), is_closing(), is_closed().
 *
 * 2. WS4Redis.connect(options): the ws4redis.v2 client. One socket (the
 *    subprotocol ws4redis.v2) carrying every subscription of the page, added
 *    and dropped while it runs, and no message lost across a reconnect.
 *
 *   var client = WS4Redis.connect({uri: '{{ WEBSOCKET_URI }}', heartbeat_msg: {{ WS4REDIS_HEARTBEAT }}});
 *   var sub = client.subscribe('chat', 'broadcast', function (data, message) { ... }, {
 *       recovered: function (ok) { if (!ok) { ... some messages may be missing ... } }
 *   });
 *   client.publish('chat', 'broadcast', 'Hello', function (error, id) { ... });
 *   sub.unsubscribe();
 *   client.close();
 *
 * Options: uri (WEBSOCKET_URL, naming no facility: messages of the URL's own
 * subscriptions reach no callback unless the page subscribes to that pair),
 * connecting(), connected(), disconnected(evt), heartbeat_msg,
 * heartbeat_interval, max_reconnect_delay (as above), and
 *   error(reply)        an error of the server that answers no request of
 *                       this client (its ref is unknown)
 *
 * client.subscribe(facility, audience, receive, callbacks) returns a
 * subscription: {facility, audience, last_id, unsubscribe(done)}. audience is
 * 'broadcast', 'user', 'group' or 'session' (this socket's own user, groups,
 * session). receive(data, message) gets each message: data is a string, or an
 * ArrayBuffer when the payload is not UTF-8 (the server's data_b64); message
 * is the server's op ({facility, audience, id, ...}). callbacks (all optional):
 *   subscribed(reply)   the server subscribed it (again after each reconnect)
 *   recovered(ok)       after a reconnect: true, the messages missed follow,
 *                       each once, in order; false, they could not be
 *                       recovered (history off, trimmed or expired): the
 *                       channel's persisted message follows, if any
 *   error(reply)        refused ({code: 400, 403, 429, 503, 500, reason}):
 *                       the subscription has ended
 *   presence(state)     asks for the facility's presence (WS4REDIS_PRESENCE on
 *                       the server): state is {users, anonymous, connections}
 *                       when subscribed (again after each reconnect), then
 *   join(user, event)   a user's first socket on the facility opened (any node)
 *   leave(user, event)  a user's last socket on the facility closed
 *                       (join and leave alone ask for presence too)
 * Subscribing again to the same facility and audience replaces the previous
 * subscription (as the server does). sub.unsubscribe(done) ends it at once
 * (receive is not called again); done(error) is called when the server has
 * answered (at once when not connected).
 *
 * client.publish(facility, audience, data, done): data is a string, or an
 * ArrayBuffer or typed array (sent as data_b64). done(error, id): id is the
 * message's id (null when the server keeps no history); error is the server's
 * {code, reason}, or code 0 when the connection closed before the answer
 * (published or not: unknown) or close() was called before it was sent.
 * While the client is not connected, subscribe() and publish() wait for the
 * connection.
 *
 * Across reconnects every subscription is sent again with `since`, the id of
 * the last message it received (messages without id, from a publisher that
 * keeps no history, do not count), so the server sends what was missed; one
 * that has received no message with an id has no place to recover from: it
 * asks since '0-0' and is told recovered(false). A socket on which the server
 * did not select ws4redis.v2 (a server without it) is closed with 4001,
 * reported to error() and tried again later. client has the state methods of
 * WS4Redis (get_state(), is_connected(), ...) and close().
 *
 * Both clients reopen a connection that breaks after a random delay that
 * grows exponentially with the failed attempts (capped), so that a restarted
 * server is not hit by every browser at once. A connection that misses three
 * heartbeats in a row is considered dead, closed and reopened. Heartbeats are
 * raw text frames on both wires and never reach the page. Nothing is
 * reopened after close(). A page hidden for another (pagehide: the browser may
 * keep it for its back button) closes its socket, and opens it again when it
 * is shown: nobody counts it as present meanwhile.
 */
(function (root, factory) {
    'use strict';
    var WS4Redis = factory();
    if (typeof module === 'object' && module.exports) {
        module.exports = WS4Redis;
    }
    root.WS4Redis = WS4Redis;
}(typeof globalThis !== 'undefined' ? globalThis : this, function () {
    'use strict';

    var MISSED_HEARTBEATS_LIMIT = 3;
    var V2_PROTOCOL = 'ws4redis.v2';
    // Close codes of this client (the 4000s are the application's).
    var CLOSE_HEARTBEATS_MISSED = 4000;
    var CLOSE_NOT_V2 = 4001;

    function noop() {}

    // Called later, never from inside the call that caused it.
    function later(callback, a, b) {
        setTimeout(function () { callback(a, b); }, 0);
    }

    /*
     * One websocket kept open: connection attempts, heartbeats, reconnects
     * with back-off, close(). `handlers` are the wire's: open(ws) (return
     * false to refuse the socket: it is closed and retried), message(data)
     * for every frame but heartbeats, close(evt).
     */
    function keepOpen(options, protocol, handlers) {
        if (!options.uri) {
            throw new Error('No Websocket URI in options');
        }
        var on = {
            connecting: options.connecting || noop,
            connected: options.connected || noop,
            disconnected: options.disconnected || noop
        };
        var heartbeatMsg = options.heartbeat_msg || null;
        var heartbeatInterval = 1000 * (options.heartbeat_interval || 5);
        var maxDelay = 1000 * (options.max_reconnect_delay || 30);
        var binaryType = options.binary_type || 'arraybuffer';
        var ws = null;
        var attempts = 0;
        var missedHeartbeats = 0;
        var heartbeatTimer = null;
        var reconnectTimer = null;
        var closedByUser = false;
        var hidden = false;  // the page left for another: no socket until it is shown again

        function connect() {
            reconnectTimer = null;
            on.connecting();
            ws = protocol ? new WebSocket(options.uri, protocol) : new WebSocket(options.uri);
            ws.binaryType = binaryType;
            ws.onopen = onOpen;
            ws.onmessage = onMessage;
            ws.onclose = onClose;
            // An error is always followed by a close event, which does the work.
            ws.onerror = noop;
        }

        function onOpen() {
            if (handlers.open(ws) === false) {
                ws.close(CLOSE_NOT_V2, 'subprotocol not selected');
                return;
            }
            attempts = 0;
            missedHeartbeats = 0;
            if (heartbeatMsg !== null) {
                heartbeatTimer = setInterval(beat, heartbeatInterval);
            }
            on.connected();
        }

        function beat() {
            missedHeartbeats += 1;
            if (missedHeartbeats > MISSED_HEARTBEATS_LIMIT) {
                // No answer for too long: the connection is dead though the
                // browser has not noticed. Closing it triggers a reconnect.
                stopHeartbeat();
                ws.close(CLOSE_HEARTBEATS_MISSED, 'heartbeats missed');
                return;
            }
            ws.send(heartbeatMsg);
        }

        function stopHeartbeat() {
            if (heartbeatTimer !== null) {
                clearInterval(heartbeatTimer);
                heartbeatTimer = null;
            }
        }

        function onMessage(evt) {
            if (heartbeatMsg !== null && evt.data === heartbeatMsg) {
                missedHeartbeats = 0;
                return;
            }
            handlers.message(evt.data);
        }

        function onClose(evt) {
            stopHeartbeat();
            handlers.close(evt);
            on.disconnected(evt);
            if (!closedByUser && !hidden) {
                scheduleReconnect();
            }
        }

        // A page the browser keeps for its back button (bfcache) kept its
        // socket open too: the server would count it as present, and send
        // it messages nobody sees. Closed when the page is hidden, opened
        // again if it is shown.
        function onPageHide() {
            if (closedByUser || hidden) {
                return;
            }
            hidden = true;
            stopHeartbeat();
            if (reconnectTimer !== null) {
                clearTimeout(reconnectTimer);
                reconnectTimer = null;
            }
            ws.close(1000, 'page hidden');
        }

        function onPageShow() {
            if (closedByUser || !hidden) {
                return;
            }
            hidden = false;
            attempts = 0;
            connect();
        }

        if (typeof window !== 'undefined' && window.addEventListener) {
            window.addEventListener('pagehide', onPageHide);
            window.addEventListener('pageshow', onPageShow);
        }

        function scheduleReconnect() {
            // "Full jitter": anywhere between 0 and an exponentially growing cap.
            attempts += 1;
            var cap = Math.min(maxDelay, 1000 * (Math.pow(2, attempts) - 1));
            reconnectTimer = setTimeout(connect, Math.random() * cap);
        }

        connect();
        return {
            send: function (message) { ws.send(message); },
            state: function () { return ws.readyState; },
            close: function () {
                closedByUser = true;
                stopHeartbeat();
                if (reconnectTimer !== null) {
                    clearTimeout(reconnectTimer);
                    reconnectTimer = null;
                }
                ws.close();
            }
        };
    }

    // The state methods both clients have, as ws4redis' client had them.
    function addStateMethods(client, link) {
        client.get_state = link.state;
        client.is_connecting = function () { return link.state() === WebSocket.CONNECTING; };
        client.is_connected = function () { return link.state() === WebSocket.OPEN; };
        client.is_closing = function () { return link.state() === WebSocket.CLOSING; };
        client.is_closed = function () { return link.state() === WebSocket.CLOSED; };
    }

    function WS4Redis(options) {
        if (!(this instanceof WS4Redis)) {
            return new WS4Redis(options);
        }
        options = options || {};
        var receive = options.receive_message || noop;
        var link = keepOpen(options, null, {
            open: noop,
            message: function (data) { receive(data); },
            close: noop
        });
        this.send_message = link.send;
        this.close = link.close;
        addStateMethods(this, link);
    }

    // -- ws4redis.v2 --------------------------------------------------------

    function toBase64(data) {
        var bytes;
        if (data instanceof ArrayBuffer) {
            bytes = new Uint8Array(data);
        } else if (ArrayBuffer.isView(data)) {
            bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        } else {
            throw new TypeError('publish() takes a string, an ArrayBuffer or a typed array');
        }
        var chunks = [];
        // fromCharCode.apply takes a bounded number of arguments: by slices.
        for (var i = 0; i < bytes.length; i += 0x8000) {
            chunks.push(String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)));
        }
        return btoa(chunks.join(''));
    }

    function fromBase64(text) {
        var binary = atob(text);
        var bytes = new Uint8Array(binary.length);
        for (var i = 0; i < binary.length; i += 1) {
            bytes[i] = binary.charCodeAt(i);
        }
        return bytes.buffer;
    }

    function pairKey(facility, audience) {
        return JSON.stringify([facility, audience]);
    }

    function clientError(reason) {
        return {op: 'error', ref: null, code: 0, reason: reason};
    }

    function Client(options) {
        options = options || {};
        var onError = options.error || noop;
        var subscriptions = {};  // pairKey -> Entry, in the order subscribed
        var waiting = {};        // ref -> {reply(reply), lost()}: requests sent, not answered
        var unsent = [];         // publications made while not connected
        var nextRef = 1;
        var ready = false;       // open, ws4redis.v2 selected, subscriptions sent
        var closed = false;      // by close(): for good
        var client = this;
        var link = keepOpen(options, V2_PROTOCOL, {open: onOpen, message: onFrame, close: onClose});

        // Sends `op` with a new ref; `handler` takes its answer.
        function request(op, handler) {
            op.ref = nextRef;
            waiting[nextRef] = handler;
            nextRef += 1;
            link.send(JSON.stringify(op));
        }

        function sendSubscribe(entry, since) {
            var op = {op: 'subscribe', facility: entry.facility, audience: entry.audience};
            if (since !== null) {
                op.since = since;
            }
            if (entry.wantsPresence) {
                op.presence = true;
            }
            entry.pending = true;
            request(op, {
                reply: function (reply) { entry.answered(reply); },
                lost: noop  // sent again at the next open
            });
        }

        function sendPublish(publication) {
            request(publication.op, {
                reply: function (reply) {
                    if (reply.op === 'error') {
                        publication.done(reply, null);
                    } else {
                        publication.done(null, reply.id);
                    }
                },
                lost: function () {
                    publication.done(clientError('disconnected before the answer: published or not, unknown'), null);
                }
            });
        }

        function onOpen(ws) {
            if (ws.protocol !== V2_PROTOCOL) {
                later(onError, clientError('the server did not select the subprotocol ' + V2_PROTOCOL));
                return false;
            }
            ready = true;
            Object.keys(subscriptions).forEach(function (key) {
                var entry = subscriptions[key];
                sendSubscribe(entry, entry.confirmed ? (entry.handle.last_id || '0-0') : null);
            });
            var publications = unsent;
            unsent = [];
            publications.forEach(sendPublish);
        }

        function onClose() {
            ready = false;
            var lost = waiting;
            waiting = {};
            Object.keys(lost).forEach(function (ref) { lost[ref].lost(); });
        }

        function onFrame(data) {
            var reply;
            try {
                reply = JSON.parse(data);
            } catch (e) {
                return;  // not a frame of this wire
            }
            if (reply === null || typeof reply !== 'object') {
                return;
            }
            if (reply.op === 'message') {
                var entry = subscriptions[pairKey(reply.facility, reply.audience)];
                // A subscription receives what follows its `subscribed`; before
                // it, a message is the previous subscription's of that pair.
                if (entry && !entry.pending) {
                    entry.receive(reply);
                }
                return;
            }
            if (reply.op === 'join' || reply.op === 'leave') {
                Object.keys(subscriptions).forEach(function (key) {
                    var watcher = subscriptions[key];
                    if (watcher.facility === reply.facility && watcher.wantsPresence && !watcher.pending) {
                        watcher.presenceEvent(reply);
                    }
                });
                return;
            }
            var ref = reply.ref;
            if (ref !== null && ref !== undefined && Object.prototype.hasOwnProperty.call(waiting, ref)) {
                var handler = waiting[ref];
                delete waiting[ref];
                handler.reply(reply);
            } else if (reply.op === 'error') {
                onError(reply);
            }
            // A `subscribed` with no ref announces a subscription of the URL.
        }

        // A subscription's state; the page holds its `handle` (facility,
        // audience, last_id, unsubscribe).
        function Entry(facility, audience, receive, callbacks) {
            var key = pairKey(facility, audience);
            var entry = this;
            var handle = this.handle = {facility: facility, audience: audience, last_id: null};
            this.facility = facility;
            this.audience = audience;
            this.pending = false;    // subscribe sent, not answered yet
            this.confirmed = false;  // subscribed once: later subscribes recover
            this.wantsPresence = !!(callbacks.presence || callbacks.join || callbacks.leave);

            function current() {
                return subscriptions[key] === entry;
            }

            this.receive = function (message) {
                if (message.id !== null && message.id !== undefined) {
                    handle.last_id = message.id;
                }
                var data = 'data_b64' in message ? fromBase64(message.data_b64) : message.data;
                receive(data, message);
            };

            this.presenceEvent = function (event) {
                (callbacks[event.op] || noop)(event.user, event);
            };

            this.answered = function (reply) {
                if (!current()) {
                    return;  // unsubscribed or replaced meanwhile
                }
                if (reply.op === 'error') {
                    delete subscriptions[key];
                    (callbacks.error || noop)(reply);
                    return;
                }
                entry.pending = false;
                entry.confirmed = true;
                (callbacks.subscribed || noop)(reply);
                if (reply.presence) {
                    (callbacks.presence || noop)(reply.presence);
                }
                if (typeof reply.recovered === 'boolean') {
                    (callbacks.recovered || noop)(reply.recovered);
                }
            };

            handle.unsubscribe = function (done) {
                done = done || noop;
                if (!current()) {
                    later(done, null);
                    return;
                }
                delete subscriptions[key];
                if (!ready) {
                    later(done, null);  // nothing subscribed on the server
                    return;
                }
                request({op: 'unsubscribe', facility: facility, audience: audience}, {
                    reply: function (reply) { done(reply.op === 'error' ? reply : null); },
                    lost: function () { done(null); }  // the socket and its subscriptions are gone
                });
            };
        }

        this.subscribe = function (facility, audience, receive, callbacks) {
            var entry = new Entry(facility, audience, receive || noop, callbacks || {});
            var key = pairKey(facility, audience);
            // Replaced, or added: either way at the end of the order.
            delete subscriptions[key];
            subscriptions[key] = entry;
            if (ready) {
                sendSubscribe(entry, null);
            }
            return entry.handle;
        };

        this.publish = function (facility, audience, data, done) {
            var op = {op: 'publish', facility: facility, audience: audience};
            if (typeof data === 'string') {
                op.data = data;
            } else {
                op.data_b64 = toBase64(data);
            }
            var publication = {op: op, done: done || noop};
            if (closed) {
                later(publication.done, clientError('closed before it was sent'), null);
            } else if (ready) {
                sendPublish(publication);
            } else {
                unsent.push(publication);
            }
        };

        this.close = function () {
            closed = true;
            link.close();
            var publications = unsent;
            unsent = [];
            publications.forEach(function (publication) {
                later(publication.done, clientError('closed before it was sent'), null);
            });
        };

        addStateMethods(client, link);
    }

    WS4Redis.connect = function (options) {
        return new Client(options);
    };

    return WS4Redis;
}));
