/*
 * Tasklight's only script: the signed-in home page.
 *
 * - builds the parameter inputs of the queue form from each workload's JSON Schema;
 * - queues tasks over the REST API (session + CSRF);
 * - keeps the task list up to date from the WebSocket /ws/, resuming from the
 *   last event id it applied after every reconnection, and shows a toast for
 *   every task that finishes (once per event id).
 *
 * The notification bell ("inbox") in the nav bar works on every signed-in
 * page; its count is kept live only here, from the socket.
 *
 * On the log-in and sign-up pages it takes the focus to a form's error.
 * On any other page it finds no task list and does nothing more.
 * Every text reaches the DOM through textContent: never innerHTML with data.
 */
(function () {
  'use strict';

  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  var RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };
  var MAX_ROWS = 50; // newest rows kept; more once older ones are asked for
  var OLDER_PAGE = 20;
  var TOAST_MS = 8000;
  var MAX_TOASTS = 5;
  var PING_EVERY_MS = 25000;
  var PONG_TIMEOUT_MS = 10000;
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  // The first connection is said to fail (badge and announcement) when the
  // page has tried this long with no hello: by then some four attempts
  // refused at once have failed (0.5, 1, 2 s apart), and a slow but working
  // server has said hello long before.
  var FIRST_CONNECT_PATIENCE_MS = 5000;
  // A socket with no hello this long after it was opened is given up and
  // tried again: a proxy that holds the handshake, or a server that accepts
  // and says nothing, never closes it. Above the 10 s the server waits for
  // a database connection (pool and connect timeouts) before it closes
  // with 1013 itself.
  var HELLO_TIMEOUT_MS = 20000;
  // A connection counts as back only once it has stayed up this long after
  // its hello: then the backoff starts again from BACKOFF_MIN_MS and its
  // recovery is announced. A server that says hello and closes at once (an
  // overloaded web process, a proxy that cuts sockets after a few seconds)
  // had the page reconnect every 0.5 s for ever, and announce "lost" and
  // "connected again" at each flap; now it backs off to BACKOFF_MAX_MS and
  // says each once.
  var STABLE_CONNECTION_MS = 10000;
  // Too many sockets for this user (4429, another tab holds the last one the
  // server allows): no use knocking every few seconds, but a tab that closes
  // frees one, so the page tries again 15 s later, then 30 s, then every 60 s.
  var TOO_MANY_BACKOFF_MIN_MS = 15000;
  var TOO_MANY_BACKOFF_MAX_MS = 60000;
  var CLOSE_UNAUTHENTICATED = 4401;
  var CLOSE_TOO_MANY = 4429;

  // ---------------------------------------------------------------- helpers

  function h(tag, props, children) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (key) {
        var value = props[key];
        if (value === undefined || value === null || value === false) return;
        if (key === 'text') node.textContent = String(value);
        else if (key === 'className') node.className = value;
        else if (key === 'dataset') Object.keys(value).forEach(function (k) { node.dataset[k] = value[k]; });
        else node.setAttribute(key, value === true ? '' : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function readJSONScript(id, fallback) {
    var node = document.getElementById(id);
    if (!node) return fallback;
    try {
      return JSON.parse(node.textContent);
    } catch (err) {
      console.warn('tasklight: could not read #' + id, err);
      return fallback;
    }
  }

  function getCookie(name) {
    var parts = document.cookie ? document.cookie.split(';') : [];
    for (var i = 0; i < parts.length; i++) {
      var part = parts[i].trim();
      if (part.slice(0, name.length + 1) === name + '=') {
        return decodeURIComponent(part.slice(name.length + 1));
      }
    }
    return '';
  }

  function csrfToken() {
    var cookie = getCookie('csrftoken');
    if (cookie) return cookie;
    var input = document.querySelector('input[name="csrfmiddlewaretoken"]');
    return input ? input.value : '';
  }

  function truncate(text, max) {
    text = String(text);
    return text.length > max ? text.slice(0, max - 1) + '\u2026' : text;
  }

  function compactJSON(value) {
    try {
      var text = JSON.stringify(value);
      return text === undefined ? String(value) : text;
    } catch (err) {
      return String(value);
    }
  }

  function parseTime(iso) {
    if (!iso) return null;
    var date = new Date(iso);
    return isNaN(date.getTime()) ? null : date;
  }

  function formatClock(date) {
    var now = new Date();
    var sameDay = date.toDateString() === now.toDateString();
    var time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    return sameDay ? time : date.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + time;
  }

  function formatDuration(ms) {
    var seconds = ms / 1000;
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + ' s';
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + ' min ' + Math.round(seconds - minutes * 60) + ' s';
    return Math.floor(minutes / 60) + ' h ' + (minutes % 60) + ' min';
  }

  function rankOf(status) {
    return Object.prototype.hasOwnProperty.call(RANK, status) ? RANK[status] : 0;
  }

  function isTask(task) {
    return task !== null && typeof task === 'object' && typeof task.id === 'string' && task.id !== '';
  }

  // ------------------------------------------------------ log-in, sign-up

  // A form sent back with errors: the focus goes to the first field in error
  // (its message describes it), else to the form's own message, so that a
  // screen reader starts with what went wrong rather than at the top.
  (function () {
    var authForm = document.querySelector('.auth-form');
    if (!authForm) return;
    var target = authForm.querySelector('[aria-invalid="true"]');
    if (!target) {
      target = authForm.querySelector('.errorlist');
      if (target) target.setAttribute('tabindex', '-1');
    }
    if (target) target.focus();
  })();

  // ----------------------------------------------------------------- toasts

  /*
   * Toasts: one live region (#toasts, aria-live="polite" in base.html); a
   * toast itself has no role, or screen readers would announce it twice
   * (its own live region, then the container's). Polite even for failures:
   * a failure toast stays until dismissed, so nothing is missed by not
   * interrupting what is being read.
   *
   * A failure (task.failed) or error toast stays until its close button is
   * pressed, or, a task's, until its notification is marked read (the
   * bell's "Mark all as read", in any tab). A success or cancellation goes
   * after TOAST_MS, counted only while the tab is visible, the pointer off
   * it and the keyboard focus out of it; it is also kept in the bell (the
   * inbox), as every failure is.
   *
   * Over MAX_TOASTS on screen, one goes: the oldest timed toast (success,
   * cancellation: the bell keeps it), else the oldest failure (unread in
   * the bell), else the oldest error (kept nowhere else), passing over a
   * toast the pointer or the focus is on while another can go. So a
   * failure never makes way for a success, which is the one dropped (the
   * newest included) while only failures and errors are shown.
   */
  // Once the pointer or the focus leaves (or the tab is shown again), a timed
  // toast stays at least this much longer, however little of TOAST_MS was
  // left: time to move back to it.
  var TOAST_RESUME_MIN_MS = 2000;
  var STICKY = { failed: true, error: true };
  var EVICTION_ORDER = { succeeded: 0, cancelled: 0, failed: 1, error: 2 };
  var toastBox = document.getElementById('toasts');
  var shownToasts = []; // oldest first

  // A hidden tab (another tab in front, the window minimised) shows nothing:
  // a timed toast's count waits for the person to come back, as it does for
  // the pointer and the focus. The bell keeps it either way.
  function pageHidden() { return document.visibilityState === 'hidden'; }

  document.addEventListener('visibilitychange', function () {
    shownToasts.forEach(function (entry) {
      if (pageHidden()) entry.pauseTimer(); else entry.startTimer();
    });
  });

  function toast(message, outcome, eventId) {
    if (!toastBox) return;
    var closeButton = h('button', {
      type: 'button',
      className: 'toast__close',
      'aria-label': 'Dismiss notification',
      title: 'Dismiss'
    }, [h('span', { 'aria-hidden': 'true' }, ['\u00d7'])]);
    var dataset = { testid: 'notification', outcome: outcome };
    if (eventId !== undefined) dataset.eventId = String(eventId); // as the bell's items have it
    var node = h('div', { className: 'toast toast--' + outcome, dataset: dataset }, [
      h('p', { className: 'toast__message' }, [message]),
      closeButton
    ]);
    var entry = {
      node: node,
      outcome: outcome,
      eventId: eventId,
      sticky: Object.prototype.hasOwnProperty.call(STICKY, outcome),
      hovered: false,
      focused: false,
      remaining: TOAST_MS,
      startedAt: 0,
      timer: null
    };

    function held() { return entry.hovered || entry.focused; }

    function startTimer() {
      if (entry.sticky || entry.timer !== null || held() || pageHidden() || !node.isConnected) return;
      entry.startedAt = performance.now();
      entry.timer = setTimeout(function () { removeToast(entry); }, entry.remaining);
    }

    function pauseTimer() {
      if (entry.timer === null) return;
      clearTimeout(entry.timer);
      entry.timer = null;
      entry.remaining = Math.max(TOAST_RESUME_MIN_MS, entry.remaining - (performance.now() - entry.startedAt));
    }

    node.addEventListener('pointerenter', function () { entry.hovered = true; pauseTimer(); });
    node.addEventListener('pointerleave', function () { entry.hovered = false; startTimer(); });
    node.addEventListener('focusin', function () { entry.focused = true; pauseTimer(); });
    node.addEventListener('focusout', function (event) {
      if (event.relatedTarget && node.contains(event.relatedTarget)) return;
      entry.focused = false;
      startTimer();
    });
    closeButton.addEventListener('click', function () { removeToast(entry); });
    entry.held = held;
    entry.startTimer = startTimer;
    entry.pauseTimer = pauseTimer;

    toastBox.appendChild(node);
    shownToasts.push(entry);
    startTimer();
    while (shownToasts.length > MAX_TOASTS) removeToast(toastToEvict());
  }

  // The toast to drop when too many are shown (the one just shown included):
  // the lowest EVICTION_ORDER, a held toast only if none else, the oldest of equals.
  function toastToEvict() {
    var chosen = null;
    var chosenScore = Infinity;
    shownToasts.forEach(function (entry) {
      var score = EVICTION_ORDER[entry.outcome] + (entry.held() ? 10 : 0);
      if (score < chosenScore) { chosen = entry; chosenScore = score; }
    });
    return chosen;
  }

  // The toasts of notifications marked read (here, in another tab, or by a
  // script) go: a failure's stays only while the bell has it unread. The
  // page's own error toasts are kept nowhere else, and stay.
  function dismissReadToasts(readUpTo) {
    shownToasts.filter(function (entry) {
      return entry.eventId !== undefined && entry.eventId <= readUpTo;
    }).forEach(removeToast);
  }

  // Focus that was in the toast moves to the close button of the next toast
  // (else the previous one) instead of falling back to the top of the page.
  function removeToast(entry) {
    var index = shownToasts.indexOf(entry);
    if (index === -1) return;
    shownToasts.splice(index, 1);
    if (entry.timer !== null) clearTimeout(entry.timer);
    entry.timer = null;
    var hadFocus = entry.node.contains(document.activeElement);
    if (entry.node.parentNode) entry.node.parentNode.removeChild(entry.node);
    var neighbour = shownToasts[index] || shownToasts[index - 1];
    if (hadFocus && neighbour) neighbour.node.querySelector('.toast__close').focus();
  }

  // ------------------------------------------------------------------ inbox

  /*
   * The bell in the nav bar. Its panel works on every signed-in page over
   * REST; the unread count is kept live only on the home page, where the
   * socket feeds it (hello, event and inbox frames). Elsewhere the count
   * shows once the panel has been opened.
   */
  var NOTIFICATION_KINDS = { 'task.succeeded': 'succeeded', 'task.failed': 'failed', 'task.cancelled': 'cancelled' };
  var INBOX_LIMIT = 10;

  function toCount(value) {
    return typeof value === 'number' && isFinite(value) && value >= 0 ? Math.floor(value) : 0;
  }

  function formatRelative(date) {
    var seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 45) return 'just now';
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + ' min ago';
    var hours = Math.round(minutes / 60);
    if (hours < 12) return hours + ' h ago';
    return formatClock(date);
  }

  var inbox = (function () {
    var root = document.querySelector('[data-inbox]');
    var bell = root ? root.querySelector('[data-testid="inbox-bell"]') : null;
    var countNode = root ? root.querySelector('[data-testid="inbox-unread"]') : null;
    var panel = root ? root.querySelector('[data-testid="inbox-panel"]') : null;
    var markButton = root ? root.querySelector('[data-testid="inbox-mark-read"]') : null;
    var list = root ? root.querySelector('[data-testid="inbox-list"]') : null;
    var statusLine = root ? root.querySelector('[data-testid="inbox-status"]') : null;
    var api = {
      latestEventId: function () { return 0; }, // the home page plugs in its lastEventId
      isRead: function () { return false; },
      onHello: function () {},
      onEvent: function () {},
      onInboxFrame: function () {}
    };
    if (!root || !bell || !countNode || !panel || !list) return api;

    var listUrl = root.dataset.notificationsUrl || '/api/notifications/';
    var readUrl = root.dataset.readUrl || '/api/notifications/read/';
    // `unread` is the server's count as of event `horizon` (a hello, an
    // inbox frame, a GET or a POST answer: each says up to which event id it
    // counted) plus the notifications heard of as events after it, whose ids
    // are in `heardIds`. A count can arrive after events it already covers
    // (a GET overtaken by the socket) or before them (an inbox frame ahead of
    // a slower worker's event): either way no notification is counted twice
    // or missed.
    var unread = 0;
    var readUpTo = 0;
    var countedUpTo = 0; // every notification up to this event id is counted
    var serverUnread = 0;
    var horizon = 0;
    var heardIds = []; // notifications counted from event frames, unread
    var items = []; // newest first: { id, event, task, created_at }
    var loaded = false; // items holds a server listing (live events may be merged in)
    var loadSeq = 0;
    var marking = false;
    var clockTimer = null;

    function renderCount() {
      // The server stops counting at 1000 (live/services.py UNREAD_COUNT_CAP).
      countNode.textContent = unread >= 1000 ? '999+' : String(unread);
      countNode.classList.toggle('inbox__count--hidden', unread === 0);
      bell.classList.toggle('inbox__bell--unread', unread > 0);
      bell.setAttribute('aria-label', unread > 0 ? 'Notifications, ' + unread + ' unread' : 'Notifications');
    }

    function recount() {
      var floor = Math.max(horizon, readUpTo);
      heardIds = heardIds.filter(function (id) { return id > readUpTo; });
      unread = serverUnread + heardIds.filter(function (id) { return id > floor; }).length;
    }

    // { unread, read_up_to, last_event_id } from a GET, a POST answer or an
    // inbox frame. One older than what is already applied (a smaller
    // read_up_to, or the same one counted up to an earlier event) is stale.
    function applyState(state) {
      if (!state || typeof state !== 'object') return;
      var upTo = toCount(state.read_up_to);
      var upToEvent = typeof state.last_event_id === 'number' ? toCount(state.last_event_id) : null;
      if (upTo < readUpTo) return;
      if (upTo === readUpTo && upToEvent !== null && upToEvent < horizon) return;
      readUpTo = upTo;
      serverUnread = toCount(state.unread);
      if (upToEvent === null) {
        // A server of the release before: its count says up to nothing.
        heardIds = [];
        horizon = readUpTo;
      } else {
        horizon = upToEvent;
      }
      countedUpTo = Math.max(countedUpTo, horizon, readUpTo);
      recount();
      renderCount();
      renderItems();
      dismissReadToasts(readUpTo);
    }

    function setStatus(text) {
      if (!statusLine) return;
      statusLine.textContent = text || '';
      statusLine.hidden = !text;
    }

    function isNotification(item) {
      return item && typeof item === 'object' && typeof item.id === 'number' && Object.prototype.hasOwnProperty.call(NOTIFICATION_KINDS, item.event);
    }

    function mergeItems(incoming) {
      var byId = new Map();
      items.concat(incoming).forEach(function (item) {
        if (isNotification(item) && !byId.has(item.id)) byId.set(item.id, item);
      });
      items = Array.from(byId.values()).sort(function (a, b) { return b.id - a.id; }).slice(0, INBOX_LIMIT);
    }

    function buildItem(item) {
      var outcome = NOTIFICATION_KINDS[item.event];
      var task = item.task && typeof item.task === 'object' ? item.task : {};
      var isUnread = item.id > readUpTo;
      var when = parseTime(item.created_at) || parseTime(task.finished_at);
      var body = h('div', { className: 'inbox-item__body' }, [
        h('div', { className: 'inbox-item__line' }, [
          h('span', { className: 'badge badge--' + outcome }, [outcome]),
          h('span', { className: 'inbox-item__kind' }, [String(task.kind || 'task')])
        ]),
        outcome === 'failed' || (outcome === 'cancelled' && task.error)
          ? h('p', { className: 'inbox-item__error' }, [truncate(String(task.error || 'no reason given'), 300)])
          : null
      ]);
      var time = when
        ? h('time', { className: 'inbox-item__time', datetime: when.toISOString(), title: when.toLocaleString() }, [formatRelative(when)])
        : null;
      return h('li', {
        className: 'inbox-item inbox-item--' + outcome + (isUnread ? ' inbox-item--unread' : ''),
        dataset: { testid: 'inbox-item', eventId: String(item.id), outcome: outcome, unread: isUnread ? 'true' : 'false' }
      }, [body, time]);
    }

    function renderItems() {
      if (panel.hidden) return;
      while (list.firstChild) list.removeChild(list.firstChild);
      items.forEach(function (item) { list.appendChild(buildItem(item)); });
      if (loaded && items.length === 0) setStatus('No notifications yet. Finished tasks show up here.');
      else if (loaded) setStatus('');
    }

    async function load() {
      var seq = ++loadSeq;
      if (!loaded) setStatus('Loading\u2026');
      try {
        var separator = listUrl.indexOf('?') === -1 ? '?' : '&';
        var response = await fetch(listUrl + separator + 'limit=' + INBOX_LIMIT, {
          credentials: 'same-origin',
          headers: { 'Accept': 'application/json' }
        });
        if (!response.ok) throw new Error('GET ' + listUrl + ' answered ' + response.status);
        var body = await response.json();
        if (seq !== loadSeq) return;
        var results = body && Array.isArray(body.results) ? body.results.filter(isNotification) : [];
        // The listing replaces what was shown; live events newer than it stay.
        var newestListed = results.reduce(function (max, item) { return Math.max(max, item.id); }, 0);
        items = items.filter(function (item) { return item.id > newestListed; });
        loaded = true;
        mergeItems(results);
        // A server of the release before says nothing of what its count
        // covers: every notification up to the newest listed one, then.
        if (body && typeof body.last_event_id !== 'number') countedUpTo = Math.max(countedUpTo, newestListed);
        if (body && typeof body === 'object' && ('unread' in body || 'read_up_to' in body)) applyState(body);
        renderItems();
      } catch (err) {
        if (seq !== loadSeq) return;
        console.warn('tasklight: could not load the notifications', err);
        renderItems();
        setStatus('Could not load the notifications.');
      }
    }

    async function markAllRead() {
      if (marking) return;
      marking = true;
      // Disabled while the request runs, the button loses the focus: a
      // keyboard user gets it back (unless the focus went elsewhere meanwhile),
      // and Escape still closes the panel onto the bell.
      var hadFocus = markButton !== null && document.activeElement === markButton;
      if (markButton) { markButton.disabled = true; markButton.setAttribute('aria-busy', 'true'); }
      var newestListed = items.reduce(function (max, item) { return Math.max(max, item.id); }, 0);
      var upTo = Math.max(toCount(api.latestEventId()), newestListed);
      try {
        var response = await fetch(readUrl, {
          method: 'POST',
          credentials: 'same-origin',
          headers: {
            'Content-Type': 'application/json',
            'Accept': 'application/json',
            'X-CSRFToken': csrfToken()
          },
          body: JSON.stringify({ up_to: upTo })
        });
        var body = null;
        try { body = await response.json(); } catch (err) { body = null; }
        if (!response.ok) throw new Error(body && body.error && body.error.message ? String(body.error.message) : 'The server answered ' + response.status + '.');
        applyState(body);
      } catch (err) {
        toast('Could not mark the notifications as read: ' + truncate(err && err.message ? err.message : String(err), 200), 'error');
      } finally {
        marking = false;
        if (markButton) { markButton.disabled = false; markButton.removeAttribute('aria-busy'); }
        var lost = document.activeElement === document.body || document.activeElement === null;
        if (hadFocus && lost && !panel.hidden) markButton.focus();
      }
    }

    function open() {
      if (!panel.hidden) return;
      panel.hidden = false;
      bell.setAttribute('aria-expanded', 'true');
      root.classList.add('inbox--open');
      renderItems();
      load();
      clockTimer = setInterval(renderItems, 30000); // keeps "2 min ago" true
    }

    function close(refocus) {
      if (panel.hidden) return;
      panel.hidden = true;
      bell.setAttribute('aria-expanded', 'false');
      root.classList.remove('inbox--open');
      if (clockTimer !== null) clearInterval(clockTimer);
      clockTimer = null;
      if (refocus) bell.focus();
    }

    bell.addEventListener('click', function () {
      if (panel.hidden) open(); else close(false);
    });
    if (markButton) markButton.addEventListener('click', markAllRead);
    document.addEventListener('click', function (event) {
      // A node removed by the click's own handler is no outside click.
      if (!panel.hidden && event.target.isConnected && !root.contains(event.target)) close(false);
    });
    document.addEventListener('keydown', function (event) {
      if (event.key !== 'Escape' || panel.hidden) return;
      close(root.contains(document.activeElement));
    });
    // Tabbing out of the bell and its panel closes the panel, which would
    // otherwise hide the controls the focus moves on to (a task row's
    // buttons lie under it). A focus lost to nothing (a button disabled
    // while it works) is no leaving.
    root.addEventListener('focusout', function (event) {
      if (!panel.hidden && event.relatedTarget && !root.contains(event.relatedTarget)) close(false);
    });

    api.onHello = function (frame) {
      serverUnread = unread = toCount(frame.unread);
      readUpTo = toCount(frame.read_up_to);
      horizon = countedUpTo = toCount(frame.last_event_id);
      heardIds = [];
      renderCount();
      renderItems();
      dismissReadToasts(readUpTo); // marked read while this socket was down
    };

    // Marked read already (elsewhere, while this page was catching up): the
    // event updates its row, but is not toasted.
    api.isRead = function (id) { return id <= readUpTo; };

    // Every event frame, including the ones a resume replays: hello already
    // counted those up to its last_event_id, and no id is counted twice.
    api.onEvent = function (frame) {
      if (typeof frame.id !== 'number' || !Object.prototype.hasOwnProperty.call(NOTIFICATION_KINDS, frame.event)) return;
      if (frame.id > countedUpTo && frame.id > readUpTo) {
        heardIds.push(frame.id);
        countedUpTo = frame.id;
        recount();
        renderCount();
      }
      // Kept even before the panel's first listing: one on its way, asked
      // for before this task ended, would not have it (load() keeps the
      // live ones newer than what it lists).
      var task = frame.task && typeof frame.task === 'object' ? frame.task : {};
      mergeItems([{ id: frame.id, event: frame.event, task: task, created_at: task.finished_at || new Date().toISOString() }]);
      renderItems();
    };

    api.onInboxFrame = function (frame) { applyState(frame); };

    renderCount();
    // A page without the live task list (About) has no socket to say hello:
    // its count comes from one GET.
    if (!document.getElementById('task-list')) load();
    return api;
  })();

  // --------------------------------------------------------------- the page

  var taskList = document.getElementById('task-list');
  if (!taskList) return; // not the signed-in home page: nothing to do

  var emptyState = document.getElementById('tasks-empty');
  // A polite status line, not shown: a task that starts, a retry or a cancel
  // accepted, a lost connection and its recovery, once each. Finished tasks
  // are announced by their toasts, progress not at all (the bars hold it).
  var announcer = document.getElementById('task-announcer');

  function announce(text) {
    if (!announcer) return;
    // The same words again still change the region, so they are read again.
    announcer.textContent = announcer.textContent === text ? text + '\u00a0' : text;
  }

  var statusBadge = document.querySelector('[data-testid="connection-status"]');
  var form = document.getElementById('queue-form');
  var tasksUrl = (form && form.dataset.tasksUrl) || '/api/tasks/';
  var holder = document.querySelector('[data-last-event-id]');
  // Every event up to lastEventId is applied; appliedAbove holds the ids
  // above it applied out of turn. Live events flow from hello on, so one can
  // overtake the older ones a resume replays (docs/events.md): each is still
  // applied once, in whatever order it comes.
  var lastEventId = holder ? parseInt(holder.dataset.lastEventId, 10) || 0 : 0;
  var appliedAbove = new Set();
  inbox.latestEventId = newestApplied;

  function newestApplied() {
    var newest = lastEventId;
    appliedAbove.forEach(function (id) { if (id > newest) newest = id; });
    return newest;
  }

  // False if the event was applied already.
  function markApplied(id) {
    if (id <= lastEventId || appliedAbove.has(id)) return false;
    appliedAbove.add(id);
    extendPrefix();
    return true;
  }

  // Everything up to `id` counts as applied (a resync reloaded it over REST).
  function advanceTo(id) {
    lastEventId = Math.max(lastEventId, id);
    appliedAbove.forEach(function (other) { if (other <= lastEventId) appliedAbove.delete(other); });
    extendPrefix();
  }

  function extendPrefix() {
    while (appliedAbove.has(lastEventId + 1)) {
      lastEventId += 1;
      appliedAbove.delete(lastEventId);
    }
  }

  // ------------------------------------------------------------- task list

  var rows = new Map(); // task id -> { task, node, parts }

  function paramsSummary(params) {
    if (!params || typeof params !== 'object') return '';
    return Object.keys(params).map(function (key) {
      var value = params[key];
      var shown = typeof value === 'string' ? JSON.stringify(truncate(value, 24)) : truncate(compactJSON(value), 24);
      return key + '=' + shown;
    }).join(', ');
  }

  function buildRow() {
    var badge = h('span', { className: 'badge' });
    var kind = h('span', { className: 'task__kind' });
    var params = h('span', { className: 'task__params' });
    var time = h('time', { className: 'task__time' });
    var actions = h('span', { className: 'task__actions' });
    var head = h('div', { className: 'task__head' }, [badge, kind, params, time, actions]);
    var fill = h('div', { className: 'bar__fill' });
    var bar = h('div', { className: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100' }, [fill]);
    var percent = h('span', { className: 'progress__label' });
    var progress = h('div', { className: 'progress', hidden: true }, [bar, percent]);
    var outcome = h('div', { className: 'task__outcome', hidden: true });
    var meta = h('div', { className: 'task__meta' });
    var node = h('li', { className: 'task', dataset: { testid: 'task-row' } }, [head, progress, outcome, meta]);
    var row = {
      node: node,
      cancelPending: false, // a cancel request is in flight
      cancelRequested: false, // the server accepted a cancel of the running task
      retryPending: false,
      parts: { badge: badge, kind: kind, params: params, time: time, actions: actions, bar: bar, fill: fill, percent: percent, progress: progress, outcome: outcome, meta: meta }
    };
    // Both buttons are built once; renderRow puts in the row only the one the
    // status calls for.
    row.parts.cancel = h('button', {
      type: 'button', className: 'button button--small button--danger-outline',
      title: 'Cancel this task', dataset: { testid: 'cancel-task' }
    }, ['Cancel']);
    row.parts.retry = h('button', {
      type: 'button', className: 'button button--small button--outline',
      title: 'Queue this task again', dataset: { testid: 'retry-task' }
    }, ['Retry']);
    row.parts.cancel.addEventListener('click', function () { cancelTask(row); });
    row.parts.retry.addEventListener('click', function () { retryTask(row); });
    return row;
  }

  function renderActions(row, status) {
    var p = row.parts;
    // A keyboard user's focus on the row's button survives it being disabled
    // (Cancelling...) and swapped (Cancel -> Retry): it comes back to the
    // button shown, unless it went elsewhere meanwhile.
    if (p.actions.contains(document.activeElement)) row.keepFocus = true;
    var active = status === 'queued' || status === 'running';
    if (!active) { row.cancelPending = false; row.cancelRequested = false; }
    var wanted = active ? p.cancel : (TERMINAL[status] ? p.retry : null);
    // Exactly the wanted button, whatever was there before.
    Array.prototype.slice.call(p.actions.children).forEach(function (child) {
      if (child !== wanted) p.actions.removeChild(child);
    });
    if (wanted && wanted.parentNode !== p.actions) p.actions.appendChild(wanted);
    p.actions.hidden = !wanted;

    var cancelling = active && (row.cancelPending || row.cancelRequested);
    p.cancel.disabled = cancelling;
    p.cancel.textContent = cancelling ? 'Cancelling\u2026' : 'Cancel';
    if (cancelling) p.cancel.setAttribute('aria-busy', 'true'); else p.cancel.removeAttribute('aria-busy');
    p.retry.disabled = row.retryPending;
    if (row.retryPending) p.retry.setAttribute('aria-busy', 'true'); else p.retry.removeAttribute('aria-busy');
    if (row.keepFocus && wanted && !wanted.disabled) {
      row.keepFocus = false;
      var focused = document.activeElement;
      if (focused === document.body || focused === null || p.actions.contains(focused)) wanted.focus();
    }
  }

  function renderRow(row) {
    var task = row.task;
    var p = row.parts;
    var status = String(task.status || 'queued');
    row.node.dataset.taskId = task.id;
    row.node.dataset.status = status;
    row.node.className = 'task task--' + status + (row.node.classList.contains('task--new') ? ' task--new' : '');

    p.badge.className = 'badge badge--' + status;
    p.badge.textContent = status;
    p.kind.textContent = String(task.kind || '');
    // Each button is described by its row (kind, parameters, time): read
    // out of the row, "Cancel" alone would not say which task.
    if (!p.kind.id) {
      var idBase = 'task-' + task.id;
      p.kind.id = idBase + '-kind';
      p.params.id = idBase + '-params';
      p.time.id = idBase + '-time';
      var describedBy = [p.kind.id, p.params.id, p.time.id].join(' ');
      p.cancel.setAttribute('aria-describedby', describedBy);
      p.retry.setAttribute('aria-describedby', describedBy);
    }
    // Named, and outside any live region (#task-list is aria-live="off"):
    // its value is there when looked for, not read out at every report.
    p.bar.setAttribute('aria-label', 'Progress of ' + (task.kind || 'the task'));
    var summary = paramsSummary(task.params);
    p.params.textContent = truncate(summary, 120);
    p.params.title = truncate(compactJSON(task.params), 500);

    var created = parseTime(task.created_at);
    p.time.textContent = created ? formatClock(created) : '';
    p.time.dateTime = task.created_at || '';
    p.time.title = created ? created.toLocaleString() : '';

    // The progress bar: while running (indeterminate until a first report).
    var running = status === 'running';
    p.progress.hidden = !running;
    if (running) {
      var known = typeof task.progress === 'number' && isFinite(task.progress);
      var value = known ? Math.max(0, Math.min(100, Math.round(task.progress))) : null;
      p.bar.classList.toggle('bar--indeterminate', !known);
      if (known) {
        p.bar.setAttribute('aria-valuenow', String(value));
        p.fill.style.width = value + '%';
        p.percent.textContent = value + '%';
      } else {
        p.bar.removeAttribute('aria-valuenow');
        p.fill.style.width = '';
        p.percent.textContent = '';
      }
    }

    // The outcome: the result or the error, once finished.
    while (p.outcome.firstChild) p.outcome.removeChild(p.outcome.firstChild);
    p.outcome.hidden = true;
    if (status === 'failed' || (status === 'cancelled' && task.error)) {
      p.outcome.appendChild(h('p', { className: 'task__error' }, [String(task.error || 'Failed.')]));
      p.outcome.hidden = false;
    } else if (status === 'succeeded') {
      var full = compactJSON(task.result);
      p.outcome.appendChild(h('code', { className: 'task__result', title: truncate(full, 2000) }, [truncate(full, 300)]));
      p.outcome.hidden = false;
    }

    var started = parseTime(task.started_at);
    var finished = parseTime(task.finished_at);
    var meta = '';
    if (started && finished) meta = 'took ' + formatDuration(Math.max(0, finished - started));
    else if (finished) meta = 'ended ' + formatClock(finished);
    else if (started) meta = 'started ' + formatClock(started);
    p.meta.textContent = meta;
    p.meta.hidden = meta === '';

    renderActions(row, status);
  }

  function createdKey(task) {
    var date = parseTime(task.created_at);
    return date ? date.getTime() : 0;
  }

  function updateEmptyState() {
    if (emptyState) emptyState.hidden = rows.size > 0;
  }

  function trimRows() {
    while (taskList.children.length > Math.max(MAX_ROWS, olderShown)) {
      var last = taskList.lastElementChild;
      rows.delete(last.dataset.taskId);
      taskList.removeChild(last);
      // What follows the rows shown has changed: found again on the next click.
      olderNext = null;
      if (olderButton) olderButton.hidden = false;
    }
  }

  /*
   * Inserts or updates a task, by id. A task's status only moves forward
   * (queued -> running -> finished), so an older copy (a late progress frame,
   * the 202 answer racing its own events, a REST page) never moves it back.
   * `append` puts a new row at the bottom (initial, newest-first lists);
   * otherwise it goes where its creation time says, the newest on top.
   */
  function upsert(task, options) {
    if (!isTask(task)) return false;
    var existing = rows.get(task.id);
    if (existing) {
      if (rankOf(task.status) < rankOf(existing.task.status)) return false;
      existing.task = task;
      renderRow(existing);
      return true;
    }
    var row = buildRow();
    row.task = task;
    renderRow(row);
    rows.set(task.id, row);
    if (options && options.append) {
      taskList.appendChild(row.node);
    } else {
      var key = createdKey(task);
      var before = null;
      for (var child = taskList.firstElementChild; child; child = child.nextElementSibling) {
        var other = rows.get(child.dataset.taskId);
        if (other && createdKey(other.task) <= key) { before = child; break; }
      }
      taskList.insertBefore(row.node, before);
      if (options && options.highlight) {
        row.node.classList.add('task--new');
        setTimeout(function () { row.node.classList.remove('task--new'); }, 1500);
      }
    }
    trimRows();
    updateEmptyState();
    return true;
  }

  // ------------------------------------------------------- cancel and retry

  function taskActionUrl(id, action) {
    var base = tasksUrl.split('?')[0];
    if (base.slice(-1) !== '/') base += '/';
    return base + encodeURIComponent(id) + '/' + action + '/';
  }

  // POSTs {} to a task's action; resolves to { ok, status, body, message }.
  async function postTaskAction(id, action) {
    var response;
    try {
      response = await fetch(taskActionUrl(id, action), {
        method: 'POST',
        credentials: 'same-origin',
        headers: {
          'Content-Type': 'application/json',
          'Accept': 'application/json',
          'X-CSRFToken': csrfToken()
        },
        body: '{}'
      });
    } catch (err) {
      return { ok: false, status: 0, body: null, message: 'Could not reach the server. Check your connection and try again.' };
    }
    var body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (response.ok && isTask(body)) return { ok: true, status: response.status, body: body, message: '' };
    var message = body && body.error && body.error.message
      ? String(body.error.message)
      : 'The server answered ' + response.status + (response.statusText ? ' ' + response.statusText : '') + '.';
    return { ok: false, status: response.status, body: body, message: message };
  }

  function rowIsCurrent(row) {
    return rows.get(row.task.id) === row;
  }

  async function cancelTask(row) {
    if (row.cancelPending || row.cancelRequested) return;
    var id = row.task.id;
    row.cancelPending = true;
    renderRow(row);
    var answer = await postTaskAction(id, 'cancel');
    row.cancelPending = false;
    if (answer.ok) {
      // Still running: it ends cancelled later (a task.cancelled event).
      if (!TERMINAL[answer.body.status]) {
        row.cancelRequested = true;
        announce('Cancelling ' + String(answer.body.kind || 'task'));
      }
      upsert(answer.body);
    } else {
      // 409: it finished meanwhile; the events bring its final state.
      toast(truncate(answer.message, 300), 'error');
    }
    if (rowIsCurrent(row)) renderRow(row);
  }

  async function retryTask(row) {
    if (row.retryPending) return;
    var id = row.task.id;
    row.retryPending = true;
    renderRow(row);
    var answer = await postTaskAction(id, 'retry');
    row.retryPending = false;
    if (answer.ok) {
      upsert(answer.body, { highlight: true });
      announce(String(answer.body.kind || 'task') + ' queued again');
    } else {
      toast(truncate(answer.message, 300), 'error');
    }
    if (rowIsCurrent(row)) renderRow(row);
  }

  var olderButton = document.getElementById('older-tasks');
  var olderNext = null; // the next page's URL; null: not known yet; '': none
  var olderShown = 0; // rows to keep once older ones were loaded (trimRows)

  readJSONScript('initial-tasks', []).forEach(function (task) { upsert(task, { append: true }); });
  updateEmptyState();

  // "Show older tasks": pages of the REST list, from below the oldest row
  // shown. The first click asks for as many as are shown to learn the
  // cursor that follows them; later clicks follow `next`.
  async function fetchTasks(url) {
    var response = await fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } });
    if (!response.ok) throw new Error('GET ' + url + ' answered ' + response.status);
    return response.json();
  }

  function withLimit(url, limit) {
    var parsed = new URL(url, location.href);
    parsed.searchParams.set('limit', String(limit));
    return parsed.pathname + parsed.search;
  }

  async function showOlder() {
    olderButton.disabled = true;
    olderButton.setAttribute('aria-busy', 'true');
    try {
      if (olderNext === null) {
        var first = await fetchTasks(withLimit(tasksUrl, Math.max(1, Math.min(500, taskList.children.length))));
        olderNext = first && first.next ? withLimit(first.next, OLDER_PAGE) : '';
      }
      var body = olderNext ? await fetchTasks(olderNext) : { results: [], next: null };
      var results = body && Array.isArray(body.results) ? body.results : [];
      olderShown = taskList.children.length + results.length;
      results.forEach(function (task) { upsert(task, { append: true }); });
      olderNext = body && body.next ? withLimit(body.next, OLDER_PAGE) : '';
      olderButton.hidden = !olderNext;
    } catch (err) {
      console.warn('tasklight: could not load older tasks', err);
      toast('Could not load older tasks. Try again.', 'error');
    } finally {
      olderButton.disabled = false;
      olderButton.removeAttribute('aria-busy');
    }
  }

  if (olderButton) olderButton.addEventListener('click', showOlder);

  // Times like "12:03:04" become "Nov 28 12:03:04" when the day changes.
  setInterval(function () { rows.forEach(renderRow); }, 60000);

  // ------------------------------------------------------------ queue form

  var schemas = readJSONScript('workload-schemas', []);
  var kindSelect = document.getElementById('workload-kind');
  var fieldsBox = document.getElementById('param-fields');
  var descriptionBox = document.getElementById('workload-description');
  var errorsBox = document.getElementById('form-errors');
  var feedback = document.getElementById('queue-feedback');
  var submitButton = form ? form.querySelector('[data-testid="queue-task"]') : null;
  var fields = []; // { key, type, input, required, enumValues }
  var savedValues = {}; // workload name -> { key: raw input state }, kept across switches

  function schemaFor(name) {
    for (var i = 0; i < schemas.length; i++) if (schemas[i] && schemas[i].name === name) return schemas[i];
    return null;
  }

  // Follows $ref into $defs, unwraps anyOf/oneOf with null (Optional fields)
  // and single allOf, keeping the outer title/description/default. A union
  // of several types (int | str) resolves to none: a JSON box, in which the
  // user can type any of them (5, or "5").
  function resolve(root, schema) {
    var s = schema || {};
    for (var depth = 0; depth < 8; depth++) {
      var outer = Object.assign({}, s);
      var inner = null;
      if (typeof s.$ref === 'string' && s.$ref.indexOf('#/') === 0) {
        inner = s.$ref.slice(2).split('/').reduce(function (node, key) { return node && node[key]; }, root) || {};
        delete outer.$ref;
      } else if (Array.isArray(s.anyOf) || Array.isArray(s.oneOf)) {
        var options = (s.anyOf || s.oneOf).filter(function (o) { return o && o.type !== 'null'; });
        inner = options.length === 1 ? options[0] : {};
        delete outer.anyOf;
        delete outer.oneOf;
      } else if (Array.isArray(s.allOf) && s.allOf.length === 1) {
        inner = s.allOf[0] || {};
        delete outer.allOf;
      }
      if (!inner) break;
      s = Object.assign({}, inner, outer);
    }
    if (Array.isArray(s.type)) {
      var types = s.type.filter(function (t) { return t !== 'null'; });
      s = Object.assign({}, s, { type: types.length === 1 ? types[0] : (types.length ? 'union' : 'string') });
    }
    return s;
  }

  function fieldType(s) {
    if (Array.isArray(s.enum) || Object.prototype.hasOwnProperty.call(s, 'const')) return 'enum';
    if (s.type === 'integer' || s.type === 'number' || s.type === 'boolean' || s.type === 'string') return s.type;
    return 'json';
  }

  function buildField(root, key, raw, required, saved) {
    var s = resolve(root, raw);
    // A checkbox cannot say "unset": a boolean whose default is null is a
    // choice of true and false, with an empty one that leaves it unset.
    if (s.type === 'boolean' && s['default'] === null) s = Object.assign({}, s, { 'enum': [true, false] });
    var type = fieldType(s);
    var id = 'param-' + key;
    var hasDefault = Object.prototype.hasOwnProperty.call(s, 'default');
    var label = String(s.title || key);
    var help = s.description ? h('p', { className: 'help', id: id + '-help' }, [String(s.description)]) : null;
    // The help and the field's errors (empty but for an error) describe it.
    var errors = h('ul', { className: 'field-errors', id: id + '-errors', hidden: true });
    var described = (help ? id + '-help ' : '') + id + '-errors';
    var input;
    // Left empty, an optional field whose default is null (or made by a
    // factory) is not sent: its default applies, not an empty value.
    var emptyIsDefault = !required && (!hasDefault || s['default'] === null);
    var field = { key: key, type: type, required: required, schema: s, emptyIsDefault: emptyIsDefault };

    if (type === 'boolean') {
      input = h('input', { type: 'checkbox', id: id, name: key, 'aria-describedby': described });
      input.checked = saved !== undefined ? Boolean(saved) : (hasDefault ? Boolean(s['default']) : false);
      field.input = input;
      return {
        field: field,
        node: h('div', { className: 'field field--checkbox', dataset: { param: key } }, [
          h('label', { className: 'checkbox', for: id }, [input, ' ' + label]),
          help,
          errors
        ])
      };
    }

    if (type === 'enum') {
      field.enumValues = Array.isArray(s['enum']) ? s['enum'].slice() : [s['const']];
      // A required choice without a default starts unchosen: queued so, the
      // server answers that it is required, instead of the page sending its
      // first value for the user. With one value there is nothing to choose.
      var unchosen = required && !hasDefault && field.enumValues.length > 1;
      input = h('select', { id: id, name: key, required: unchosen, 'aria-describedby': described });
      if (emptyIsDefault) input.appendChild(h('option', { value: '' }, ['\u2014']));
      else if (unchosen) input.appendChild(h('option', { value: '' }, ['Choose\u2026']));
      field.enumValues.forEach(function (value, index) {
        var option = h('option', { value: String(index) }, [typeof value === 'string' ? value : compactJSON(value)]);
        if (hasDefault && compactJSON(value) === compactJSON(s['default'])) option.selected = true;
        input.appendChild(option);
      });
      if (saved !== undefined) input.value = saved;
    } else if (type === 'integer' || type === 'number') {
      var min = typeof s.minimum === 'number' ? s.minimum : s.exclusiveMinimum;
      var max = typeof s.maximum === 'number' ? s.maximum : s.exclusiveMaximum;
      var step = typeof s.multipleOf === 'number' ? s.multipleOf : (type === 'integer' ? 1 : 'any');
      input = h('input', {
        type: 'number', id: id, name: key, inputmode: type === 'integer' ? 'numeric' : 'decimal',
        min: typeof min === 'number' ? min : null, max: typeof max === 'number' ? max : null, step: step,
        required: required, 'aria-describedby': described
      });
      input.value = saved !== undefined ? saved : (hasDefault && s['default'] !== null ? String(s['default']) : '');
    } else {
      // Strings are free text (possibly long); anything else is typed as JSON.
      input = h('textarea', {
        id: id, name: key, rows: type === 'string' ? 5 : 3, required: required,
        maxlength: typeof s.maxLength === 'number' ? s.maxLength : null,
        placeholder: type === 'json' ? 'JSON' : (Array.isArray(s.examples) && typeof s.examples[0] === 'string' ? s.examples[0] : null),
        spellcheck: type === 'json' ? 'false' : null,
        'aria-describedby': described
      });
      if (saved !== undefined) input.value = saved;
      else if (hasDefault && s['default'] !== null) input.value = type === 'string' ? String(s['default']) : JSON.stringify(s['default'], null, 2);
    }
    field.input = input;
    var labelNode = h('label', { for: id }, [label, required ? h('span', { className: 'required', 'aria-hidden': 'true' }, [' *']) : null]);
    return {
      field: field,
      node: h('div', { className: 'field', dataset: { param: key } }, [labelNode, input, help, errors])
    };
  }

  function saveValues() {
    if (!kindSelect || !kindSelect.dataset.built) return;
    var values = {};
    fields.forEach(function (f) { values[f.key] = f.type === 'boolean' ? f.input.checked : f.input.value; });
    savedValues[kindSelect.dataset.built] = values;
  }

  function buildFields() {
    if (!kindSelect || !fieldsBox) return;
    saveValues();
    var workload = schemaFor(kindSelect.value);
    var schema = (workload && workload.params) || {};
    var saved = savedValues[kindSelect.value] || {};
    var required = Array.isArray(schema.required) ? schema.required : [];
    var properties = schema.properties || {};
    fields = [];
    while (fieldsBox.firstChild) fieldsBox.removeChild(fieldsBox.firstChild);
    Object.keys(properties).forEach(function (key) {
      var built = buildField(schema, key, properties[key], required.indexOf(key) !== -1, saved[key]);
      fields.push(built.field);
      fieldsBox.appendChild(built.node);
    });
    if (fields.length === 0) fieldsBox.appendChild(h('p', { className: 'help' }, ['This workload takes no parameters.']));
    if (descriptionBox) descriptionBox.textContent = workload ? String(workload.description || '') : '';
    kindSelect.dataset.built = kindSelect.value;
    clearErrors();
  }

  function clearErrors() {
    if (errorsBox) {
      while (errorsBox.firstChild) errorsBox.removeChild(errorsBox.firstChild);
      errorsBox.hidden = true;
    }
    if (form) {
      form.querySelectorAll('.field-errors').forEach(function (list) {
        while (list.firstChild) list.removeChild(list.firstChild);
        list.hidden = true;
      });
      form.querySelectorAll('[aria-invalid]').forEach(function (node) { node.removeAttribute('aria-invalid'); });
    }
  }

  function fieldErrorList(name) {
    if (!form) return null;
    if (name === 'kind') return form.querySelector('[data-errors-for="kind"]');
    var key = name.indexOf('params.') === 0 ? name.slice('params.'.length).split('.')[0] : null;
    if (key === null) return null;
    var wrapper = null;
    fieldsBox.querySelectorAll('[data-param]').forEach(function (node) { if (node.dataset.param === key) wrapper = node; });
    if (!wrapper) return null;
    var control = wrapper.querySelector('input, select, textarea');
    if (control) control.setAttribute('aria-invalid', 'true');
    return wrapper.querySelector('.field-errors');
  }

  // error: { message, fields? } as the API sends it.
  function showErrors(error) {
    clearErrors();
    if (!errorsBox) return;
    var message = error && error.message ? String(error.message) : 'The task could not be queued.';
    errorsBox.appendChild(h('p', { className: 'form-errors__message' }, [message]));
    var fieldMap = error && error.fields && typeof error.fields === 'object' ? error.fields : {};
    var names = Object.keys(fieldMap);
    if (names.length) {
      var list = h('ul', { className: 'form-errors__fields' });
      names.forEach(function (name) {
        var messages = Array.isArray(fieldMap[name]) ? fieldMap[name] : [fieldMap[name]];
        var inline = fieldErrorList(name);
        messages.forEach(function (text) {
          var shown = typeof text === 'string' ? text : compactJSON(text);
          list.appendChild(h('li', { dataset: { field: name } }, [h('code', null, [name]), ': ' + shown]));
          if (inline) {
            inline.appendChild(h('li', null, [shown]));
            inline.hidden = false;
          }
        });
      });
      errorsBox.appendChild(list);
    }
    errorsBox.hidden = false;
  }

  // The parameters, typed per the schema; empty optional numbers, and empty
  // optional strings and choices whose default is null, are left out so that
  // the server's defaults apply.
  function collectParams() {
    var params = {};
    var local = {};
    fields.forEach(function (f) {
      var raw;
      if (f.type === 'boolean') {
        params[f.key] = f.input.checked;
      } else if (f.type === 'integer' || f.type === 'number') {
        raw = f.input.value.trim();
        if (raw === '') {
          if (f.input.validity && f.input.validity.badInput) local['params.' + f.key] = ['Enter a number.'];
          return; // absent: the default applies, or the server says it is required
        }
        var number = Number(raw);
        if (!isFinite(number)) { local['params.' + f.key] = ['Enter a number.']; return; }
        // Number(), not parseInt(): a fraction typed for an integer is sent as
        // typed, and the server explains, instead of being silently truncated.
        params[f.key] = number;
      } else if (f.type === 'enum') {
        if (f.input.value === '') return;
        params[f.key] = f.enumValues[parseInt(f.input.value, 10)];
      } else if (f.type === 'string') {
        if (f.input.value === '' && f.emptyIsDefault) return;
        params[f.key] = f.input.value;
      } else {
        raw = f.input.value.trim();
        if (raw === '') return;
        try {
          params[f.key] = JSON.parse(raw);
        } catch (err) {
          local['params.' + f.key] = ['Enter valid JSON.'];
        }
      }
    });
    return Object.keys(local).length ? { errors: local } : { params: params };
  }

  function setFeedback(text) {
    if (feedback) feedback.textContent = text;
  }

  var feedbackTimer = null;

  async function submitForm(event) {
    event.preventDefault();
    clearErrors();
    setFeedback('');
    var kind = kindSelect ? kindSelect.value : '';
    var collected = collectParams();
    if (collected.errors) {
      showErrors({ message: 'Some parameters are not valid.', fields: collected.errors });
      return;
    }
    // Disabled while the request runs, the button loses the focus: a
    // keyboard user gets it back (unless the focus went elsewhere meanwhile).
    var hadFocus = submitButton !== null && document.activeElement === submitButton;
    if (submitButton) submitButton.disabled = true;
    try {
      var response = await fetch(tasksUrl, {
        method: 'POST',
        credentials: 'same-origin',
        headers: {
          'Content-Type': 'application/json',
          'Accept': 'application/json',
          'X-CSRFToken': csrfToken()
        },
        body: JSON.stringify({ kind: kind, params: collected.params })
      });
      var body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      if (response.ok && isTask(body)) {
        upsert(body, { highlight: true });
        setFeedback('Queued.');
        if (feedbackTimer !== null) clearTimeout(feedbackTimer);
        feedbackTimer = setTimeout(function () { setFeedback(''); }, 3000);
      } else if (body && body.error) {
        showErrors(body.error);
      } else {
        showErrors({ message: 'The server answered ' + response.status + ' ' + (response.statusText || '') + '.' });
      }
    } catch (err) {
      showErrors({ message: 'Could not reach the server. Check your connection and try again.' });
    } finally {
      if (submitButton) submitButton.disabled = false;
      if (hadFocus && document.activeElement === document.body) submitButton.focus();
    }
  }

  if (form && kindSelect && fieldsBox) {
    kindSelect.addEventListener('change', buildFields);
    form.addEventListener('submit', submitForm);
    buildFields();
  }

  // ------------------------------------------------------------ WebSocket

  var socket = null;
  var everConnected = false;
  var attempt = 0;
  var reconnectTimer = null;
  var pingTimer = null;
  var deadTimer = null;
  var helloTimer = null;
  var stableTimer = null;
  var patienceTimer = null;
  var pingId = 0;
  var helloLastEventId = 0;
  var stopped = false; // 4401: not signed in any more
  var toasted = new Set(); // event ids already announced

  // The badge is shown, not read out: in a live region, its "connecting",
  // "connected" was announced at every page load, for nothing the person
  // did. What is announced (#task-announcer), once each however many
  // attempts follow: a lost connection and its recovery; a first connection
  // that has not come after FIRST_CONNECT_PATIENCE_MS (the badge then says
  // "cannot connect, retrying" instead of "connecting") and its success; a
  // socket refused as one too many for the user (4429), with what to do; and
  // a page left signed out that does not reload itself. A first connect that
  // takes a few quick attempts is nothing to tell. A recovery is announced
  // once the connection has held STABLE_CONNECTION_MS, so a server that
  // drops each socket after its hello makes one outage, said once.
  var lossAnnounced = false;
  var unreachable = false; // the first connection is overdue: said once
  var tooMany = false; // the last socket was refused as one too many (4429)
  var lastErrorCode = null; // of the current socket's last error frame
  var tooManyAnnounced = false;
  var outageBeforeHello = false; // what was announced came before any hello

  var TOO_MANY_TEXT = 'Too many tabs open for live updates. Close another tab of Tasklight; this page keeps trying.';

  var CONNECTION_TEXT = {
    connecting: 'connecting',
    unreachable: 'cannot connect, retrying',
    'too-many': 'too many tabs open, retrying',
    connected: 'connected',
    reconnecting: 'reconnecting',
    'signed-out': 'signed out'
  };

  // The badge follows every change; the announcements (above) are made
  // once per outage. Its end is announced by onStable, once the
  // connection has held: a connection that says hello and drops again is
  // part of the same outage.
  function setConnection(state) {
    if (state === 'too-many' && !tooManyAnnounced) {
      // Said even when a loss was: it tells what the person can do.
      if (!lossAnnounced) outageBeforeHello = !everConnected;
      lossAnnounced = tooManyAnnounced = true;
      announce(TOO_MANY_TEXT);
    } else if (state === 'reconnecting' && !lossAnnounced) {
      lossAnnounced = true;
      outageBeforeHello = false;
      announce('Connection lost. Live updates paused; reconnecting.');
    } else if (state === 'unreachable' && !lossAnnounced) {
      lossAnnounced = true;
      outageBeforeHello = true;
      announce('Cannot connect for live updates. Still trying.');
    }
    if (!statusBadge) return;
    statusBadge.dataset.state = state;
    statusBadge.textContent = CONNECTION_TEXT[state] || state;
  }

  // What the badge says while no socket is open.
  function waitingState() {
    if (tooMany) return 'too-many';
    if (everConnected) return 'reconnecting';
    return unreachable ? 'unreachable' : 'connecting';
  }

  // Counted from the page's first attempt; a hello stops it (onHello).
  function startPatience() {
    if (everConnected || unreachable || patienceTimer !== null) return;
    patienceTimer = setTimeout(function () {
      patienceTimer = null;
      if (everConnected || stopped) return;
      unreachable = true;
      setConnection(waitingState());
    }, FIRST_CONNECT_PATIENCE_MS);
  }

  function stopPatience() {
    if (patienceTimer !== null) clearTimeout(patienceTimer);
    patienceTimer = null;
  }

  function socketUrl() {
    var path = taskList.dataset.wsPath || '/ws/';
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path;
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function stopTimers() {
    if (pingTimer !== null) clearInterval(pingTimer);
    if (deadTimer !== null) clearTimeout(deadTimer);
    if (helloTimer !== null) clearTimeout(helloTimer);
    if (stableTimer !== null) clearTimeout(stableTimer);
    pingTimer = null;
    deadTimer = null;
    helloTimer = null;
    stableTimer = null;
  }

  // The connection has stayed up STABLE_CONNECTION_MS since its hello.
  function onStable() {
    stableTimer = null;
    attempt = 0;
    if (lossAnnounced) {
      announce(outageBeforeHello ? 'Connected. Live updates started.' : 'Connected again. Live updates resumed.');
    }
    lossAnnounced = tooManyAnnounced = false;
  }

  function connect() {
    if (stopped || socket) return;
    if (reconnectTimer !== null) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    setConnection(waitingState());
    startPatience();
    var ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (err) {
      console.warn('tasklight: cannot open the WebSocket', err);
      scheduleReconnect();
      return;
    }
    socket = ws;
    lastErrorCode = null;
    helloTimer = setTimeout(dropSocket, HELLO_TIMEOUT_MS);
    ws.onopen = function () {
      if (ws !== socket) return;
      pingTimer = setInterval(ping, PING_EVERY_MS);
    };
    ws.onmessage = function (message) {
      if (ws !== socket) return;
      if (deadTimer !== null) { clearTimeout(deadTimer); deadTimer = null; }
      var frame;
      try { frame = JSON.parse(message.data); } catch (err) {
        console.warn('tasklight: a frame that is not JSON', message.data);
        return;
      }
      handleFrame(frame);
    };
    ws.onclose = function (close) {
      if (ws !== socket) return;
      socket = null;
      stopTimers();
      if (close.code === CLOSE_UNAUTHENTICATED) {
        stopped = true;
        stopPatience();
        setConnection('signed-out');
        // Told after a hello: the credential this page was opened with has
        // ended (log-out, another user's log-in, a new password): always
        // reload, or the page would go on showing, and queueing as, whoever
        // it was. Refused before any hello: once a minute at most; a page
        // that stays is told so, as it tries no more.
        if (everConnected) location.reload();
        else if (!reloadSignedOut()) announce('Signed out. Live updates stopped; reload the page to sign in again.');
        return;
      }
      // 4429 also ends a socket that sent too many frames, which this page
      // never does: that one is an ordinary failure, not "too many tabs".
      tooMany = close.code === CLOSE_TOO_MANY && lastErrorCode !== 'too_many_frames';
      scheduleReconnect();
    };
    ws.onerror = function () { /* a close event follows */ };
  }

  // The socket was refused before it ever said hello: the page, its form
  // and its name in the bar may be stale. Reloaded, it shows whoever is
  // signed in now, or the log-in links. Once a minute at most, in case the
  // socket is refused while pages are not (a proxy dropping cookies on
  // WebSockets), which would otherwise reload for ever.
  // Says whether it reloads.
  function reloadSignedOut() {
    var key = 'tasklight.reloadedSignedOut';
    var last = 0;
    try { last = parseInt(sessionStorage.getItem(key), 10) || 0; } catch (err) { /* storage off */ }
    if (Date.now() - last < 60000) return false;
    try { sessionStorage.setItem(key, String(Date.now())); } catch (err) { return false; }
    location.reload();
    return true;
  }

  // Gives up on the current socket now (a dead connection may take minutes
  // to report its close; a held handshake may never end) and reconnects.
  function dropSocket() {
    var ws = socket;
    if (!ws) return;
    socket = null;
    stopTimers();
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(4000, 'no answer'); } catch (err) { /* already closed */ }
    tooMany = false;
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer !== null) return;
    setConnection(waitingState());
    var least = tooMany ? TOO_MANY_BACKOFF_MIN_MS : BACKOFF_MIN_MS;
    var most = tooMany ? TOO_MANY_BACKOFF_MAX_MS : BACKOFF_MAX_MS;
    var base = Math.min(most, least * Math.pow(2, attempt));
    var delay = Math.min(most, base * (0.75 + Math.random() * 0.5));
    attempt += 1;
    reconnectTimer = setTimeout(function () {
      reconnectTimer = null;
      connect();
    }, delay);
  }

  function ping() {
    pingId += 1;
    send({ type: 'ping', id: pingId });
    if (deadTimer === null) deadTimer = setTimeout(dropSocket, PONG_TIMEOUT_MS);
  }

  function handleFrame(frame) {
    if (!frame || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'hello': onHello(frame); break;
      case 'event': onEvent(frame); break;
      case 'progress': upsert(frame.task); break; // never moves a finished task back (upsert)
      case 'pong': break;
      case 'inbox': inbox.onInboxFrame(frame); break;
      case 'resync': resync(frame.last_event_id); break;
      case 'error':
        console.warn('tasklight: server error frame', frame.code, frame.message);
        lastErrorCode = frame.code;
        if (frame.code === 'invalid_resume') resync();
        break;
      default: break;
    }
  }

  function onHello(frame) {
    if (helloTimer !== null) { clearTimeout(helloTimer); helloTimer = null; }
    // A socket reopened after a drop carries whatever session cookie the
    // browser has now: another user may have signed in meanwhile (another
    // tab). This page shows someone else: reload it as that user, before
    // anything of theirs is merged into it.
    var shownUser = document.body.getAttribute('data-username');
    if (shownUser !== null && typeof frame.user === 'string' && frame.user !== shownUser) {
      stopped = true;
      if (socket) { socket.onclose = null; try { socket.close(); } catch (err) { /* closed */ } }
      location.reload();
      return;
    }
    stopPatience();
    // The backoff and the announcements wait for the connection to hold:
    // one that drops at once is no recovery (STABLE_CONNECTION_MS).
    stableTimer = setTimeout(onStable, STABLE_CONNECTION_MS);
    tooMany = false;
    everConnected = true;
    setConnection('connected');
    helloLastEventId = typeof frame.last_event_id === 'number' ? frame.last_event_id : 0;
    inbox.onHello(frame);
    if (newestApplied() > helloLastEventId) {
      // The server knows fewer events than this page has seen (its data was
      // reset): start over from its numbering.
      lastEventId = helloLastEventId;
      appliedAbove.clear();
      toasted.clear();
      resync();
      return;
    }
    send({ type: 'resume', after: lastEventId });
  }

  var OUTCOMES = NOTIFICATION_KINDS;

  function onEvent(frame) {
    if (frame && typeof frame.id === 'number') inbox.onEvent(frame);
    if (typeof frame.id !== 'number' || !markApplied(frame.id)) return; // already applied
    upsert(frame.task);
    if (frame.event === 'task.started' && isTask(frame.task)) {
      var started = rows.get(frame.task.id);
      if (started && started.task.status === 'running') announce(String(frame.task.kind || 'task') + ' started');
    }
    var outcome = OUTCOMES[frame.event];
    if (outcome && !toasted.has(frame.id) && !inbox.isRead(frame.id)) {
      toasted.add(frame.id);
      var task = isTask(frame.task) ? frame.task : {};
      var kind = String(task.kind || 'task');
      var message = kind + ' ' + outcome;
      if (outcome === 'failed' || (outcome === 'cancelled' && task.error)) message += ': ' + truncate(String(task.error || 'no reason given'), 300);
      toast(message, outcome, frame.id);
    }
  }

  // The server no longer holds the events this page missed: reload the
  // list over REST. Everything up to the resync's last_event_id (else the
  // hello's) is in what the reload reads; later events arrive live
  // meanwhile, and upsert never lets the (possibly older) REST copy move a
  // task back.
  var resyncing = false;
  var resyncAgain = false;

  async function resync(upTo) {
    advanceTo(Math.max(helloLastEventId, typeof upTo === 'number' ? upTo : 0));
    if (resyncing) { resyncAgain = true; return; }
    resyncing = true;
    try {
      for (var tries = 0; tries < 4; tries++) {
        try {
          var separator = tasksUrl.indexOf('?') === -1 ? '?' : '&';
          var response = await fetch(tasksUrl + separator + 'limit=' + MAX_ROWS, {
            credentials: 'same-origin',
            headers: { 'Accept': 'application/json' }
          });
          if (!response.ok) throw new Error('GET ' + tasksUrl + ' answered ' + response.status);
          var body = await response.json();
          var results = body && Array.isArray(body.results) ? body.results : [];
          results.forEach(function (task) { upsert(task); });
          return;
        } catch (err) {
          console.warn('tasklight: could not reload the tasks', err);
          await new Promise(function (resolve) { setTimeout(resolve, 1000 * Math.pow(2, tries)); });
        }
      }
    } finally {
      resyncing = false;
      if (resyncAgain) { resyncAgain = false; resync(); }
    }
  }

  window.addEventListener('online', function () {
    if (reconnectTimer !== null) { clearTimeout(reconnectTimer); reconnectTimer = null; attempt = 0; connect(); }
  });
  // Leaving the page (or entering the back/forward cache): close cleanly,
  // and reopen if the page is shown again.
  window.addEventListener('pagehide', function () {
    if (reconnectTimer !== null) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    stopPatience();
    var ws = socket;
    if (ws) {
      socket = null;
      stopTimers();
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, 'page hidden'); } catch (err) { /* already closed */ }
    }
  });
  window.addEventListener('pageshow', function (event) {
    if (event.persisted) connect();
  });

  connect();
})();
