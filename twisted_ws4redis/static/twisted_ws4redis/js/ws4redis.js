/*
 * ws4redis.js: the browser client of twisted_ws4redis (and of ws4redis).
 *
 * Plain JavaScript, no dependencies. Load it with a script tag (it defines
 * window.WS4Redis), require() it, or import ws4redis.mjs beside it.
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
 *
 * A connection that breaks is reopened after a random delay that grows
 * exponentially with the failed attempts (capped), so that a restarted server
 * is not hit by every browser at once. A connection that misses three
 * heartbeats in a row is considered dead, closed and reopened. Nothing is
 * reopened after close().
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

    function noop() {}

    function WS4Redis(options) {
        if (!(this instanceof WS4Redis)) {
            return new WS4Redis(options);
        }
        options = options || {};
        if (!options.uri) {
            throw new Error('No Websocket URI in options');
        }
        var on = {
            connecting: options.connecting || noop,
            connected: options.connected || noop,
            receive_message: options.receive_message || noop,
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

        function connect() {
            reconnectTimer = null;
            on.connecting();
            ws = new WebSocket(options.uri);
            ws.binaryType = binaryType;
            ws.onopen = onOpen;
            ws.onmessage = onMessage;
            ws.onclose = onClose;
            // An error is always followed by a close event, which does the work.
            ws.onerror = noop;
        }

        function onOpen() {
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
                ws.close(4000, 'heartbeats missed');
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
            on.receive_message(evt.data);
        }

        function onClose(evt) {
            stopHeartbeat();
            on.disconnected(evt);
            if (!closedByUser) {
                scheduleReconnect();
            }
        }

        function scheduleReconnect() {
            // "Full jitter": anywhere between 0 and an exponentially growing cap.
            attempts += 1;
            var cap = Math.min(maxDelay, 1000 * (Math.pow(2, attempts) - 1));
            reconnectTimer = setTimeout(connect, Math.random() * cap);
        }

        this.send_message = function (message) {
            ws.send(message);
        };

        this.get_state = function () {
            return ws.readyState;
        };

        this.close = function () {
            closedByUser = true;
            stopHeartbeat();
            if (reconnectTimer !== null) {
                clearTimeout(reconnectTimer);
                reconnectTimer = null;
            }
            ws.close();
        };

        this.is_connecting = function () { return ws.readyState === WebSocket.CONNECTING; };
        this.is_connected = function () { return ws.readyState === WebSocket.OPEN; };
        this.is_closing = function () { return ws.readyState === WebSocket.CLOSING; };
        this.is_closed = function () { return ws.readyState === WebSocket.CLOSED; };

        connect();
    }

    return WS4Redis;
}));
