// Follows a running deploy's log: the page came with the log as it stood;
// this appends the lines logged since, from the server-sent events of
// /deploys/{id}/events, and shows the record as it changes and ends.
(function () {
  'use strict';
  var log = document.getElementById('log');
  var note = document.getElementById('live');
  if (!log || log.getAttribute('data-running') !== 'true' || !window.EventSource) {
    return;
  }
  var seq = Number(log.getAttribute('data-seq')) || 0;
  var es = new EventSource(log.getAttribute('data-events') + '?after=' + seq);
  setNote('Following the log live.');

  function setNote(text) {
    if (note) {
      note.textContent = text;
    }
  }

  function span(cls, text) {
    var s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  // row builds a line like the server renders it, from text only: a
  // line's text never becomes markup.
  function row(l) {
    var div = document.createElement('div');
    div.id = 'L' + l.seq;
    div.className = l.class;
    var t = document.createElement('a');
    t.className = 't';
    t.href = '#L' + l.seq;
    t.textContent = l.clock;
    div.appendChild(t);
    div.appendChild(document.createTextNode(' '));
    div.appendChild(span('h', l.host || '-'));
    div.appendChild(document.createTextNode(' '));
    div.appendChild(span('s', l.stream));
    div.appendChild(document.createTextNode(' '));
    div.appendChild(span('x', l.text));
    return div;
  }

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
  }

  // record swaps in the record section the server rendered anew (its
  // values escaped there, like the rest of the page).
  function record(html) {
    var r = document.getElementById('record');
    if (r && typeof html === 'string') {
      r.innerHTML = html;
    }
  }

  es.addEventListener('line', function (e) {
    var l = JSON.parse(e.data);
    if (l.seq <= seq) {
      return;
    }
    seq = l.seq;
    var stick = atBottom();
    log.appendChild(row(l));
    log.setAttribute('data-seq', String(seq));
    if (stick) {
      window.scrollTo(0, document.documentElement.scrollHeight);
    }
  });
  es.addEventListener('record', function (e) {
    record(JSON.parse(e.data).html);
  });
  es.addEventListener('end', function (e) {
    // Closed before the server ends the stream, so the browser does not
    // reconnect.
    es.close();
    var d = JSON.parse(e.data);
    record(d.html);
    log.setAttribute('data-running', 'false');
    setNote('The deploy ended: ' + d.result + '.');
  });
  es.addEventListener('error', function () {
    if (es.readyState === EventSource.CONNECTING) {
      setNote('Lost the connection; reconnecting…');
    }
  });
  es.addEventListener('open', function () {
    setNote('Following the log live.');
  });
}());
