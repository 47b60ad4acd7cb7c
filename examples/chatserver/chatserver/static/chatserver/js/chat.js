/*
 * The chat pages' glue: one WS4Redis client per page, a message list, a form.
 * The broadcast chat sends through the websocket; the user and group chats
 * POST to their Django view, which publishes (data-send="post"); a page with
 * data-show-sent shows what it sent, as the sender is not among the receivers.
 * A page with data-facility (the broadcast chat) uses the ws4redis.v2 client:
 * one subscription, publications answered, and what it missed while its
 * connection was down sent again when it is back.
 */
(function () {
    'use strict';

    var section = document.querySelector('section.chat');
    var list = document.getElementById('messages');
    var status = document.getElementById('status');
    var form = document.getElementById('send');
    var input = document.getElementById('message');
    var me = document.getElementById('username');

    function setStatus(text, state) {
        status.textContent = text;
        status.className = 'status ' + state;
    }

    function timeNow() {
        return new Date().toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
    }

    // Text only (textContent): a message is never parsed as HTML.
    function show(text, meta, kind) {
        var item = document.createElement('li');
        item.className = kind || 'received';
        var body = document.createElement('span');
        body.className = 'text';
        body.textContent = text;
        var info = document.createElement('span');
        info.className = 'meta';
        info.textContent = (meta ? meta + ' · ' : '') + timeNow();
        item.appendChild(body);
        item.appendChild(info);
        list.appendChild(item);
        list.scrollTop = list.scrollHeight;
    }

    // The user and group chats receive {"from", "to", "text"} from their view;
    // the broadcast chat receives whatever a browser sent.
    function receive(data) {
        if (typeof data !== 'string') {
            show('(' + data.byteLength + ' bytes of binary data)', '', 'received');
            return;
        }
        var message = null;
        try {
            message = JSON.parse(data);
        } catch (e) { /* plain text */ }
        if (message && typeof message === 'object' && 'text' in message) {
            var mine = me && message.from === me.textContent;
            show(message.text, (mine ? 'you' : message.from) + ' → ' + message.to, mine ? 'sent' : 'received');
        } else {
            show(String(data), '', 'received');
        }
    }

    var options = {
        uri: section.dataset.wsUri,
        heartbeat_msg: window.WS4REDIS_HEARTBEAT,
        connecting: function () { setStatus('connecting…', 'connecting'); },
        connected: function () { setStatus('connected', 'connected'); },
        disconnected: function () { setStatus('disconnected, retrying…', 'disconnected'); },
        receive_message: receive
    };
    var client, sendThroughSocket;
    var here = {};
    var hereLine = document.getElementById('here');

    function showHere() {
        var users = Object.keys(here).sort();
        hereLine.textContent = 'Logged in here: ' + (users.length ? users.join(', ') : 'nobody');
    }
    var facility = section.dataset.facility;
    if (facility) {
        client = WS4Redis.connect(options);
        var audience = section.dataset.audience;
        client.subscribe(facility, audience, receive, {
            recovered: function (ok) {
                if (!ok) {
                    show('Messages sent while you were away could not all be recovered', '', 'notice');
                }
            },
            error: function (reply) { show('Not subscribed: ' + reply.reason, '', 'error'); },
            // Who is here (WS4REDIS_PRESENCE): the state at each (re)subscribe, then its changes.
            presence: function (state) {
                here = {};
                state.users.forEach(function (user) { here[user] = true; });
                showHere();
            },
            join: function (user) { here[user] = true; showHere(); },
            leave: function (user) { delete here[user]; showHere(); }
        });
        sendThroughSocket = function (text) {
            client.publish(facility, audience, text, function (error) {
                if (error) {
                    show('Not sent: ' + error.reason, '', 'error');
                }
            });
        };
    } else {
        client = WS4Redis(options);
        sendThroughSocket = client.send_message;
    }
    // For the console (and the browser tests).
    window.chatClient = client;

    function post() {
        var data = new FormData(form);
        fetch(form.action, {method: 'POST', body: data, credentials: 'same-origin'})
            .then(function (response) { return response.json(); })
            .then(function (reply) {
                if (!reply.ok) {
                    show('Not sent: ' + JSON.stringify(reply.errors), '', 'error');
                } else if ('showSent' in section.dataset) {
                    // A user message reaches the addressee only: show it here ourselves.
                    show(data.get('message'), 'you → ' + data.get('user'), 'sent');
                }
            })
            .catch(function (error) { show('Not sent: ' + error, '', 'error'); });
    }

    if (form) {
        form.addEventListener('submit', function (event) {
            event.preventDefault();
            if (!input.value) {
                return;
            }
            if (section.dataset.send === 'post') {
                post();
            } else {
                sendThroughSocket(input.value);
            }
            input.value = '';
            input.focus();
        });
    }
}());
