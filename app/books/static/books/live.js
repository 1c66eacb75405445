// The live page's script (books/index.html): new books from /books/stream/ as they
// are committed, each book's summary when the background task has written it, the
// numbers of the worker serving the stream, and the staff's add form sent without
// leaving the page. A file, not inline code: the page's
// Content-Security-Policy allows this site's scripts and the one nonce'd inline script.
"use strict";

(() => {
  const list = document.getElementById("books");
  if (!list || !("EventSource" in window)) {
    return; // the page still works: rendered by the server, the form posts and redirects back
  }
  const state = document.getElementById("live-state");
  const limit = Number(list.dataset.shown) || 50;
  const shown = new Set(Array.from(list.children, (item) => Number(item.dataset.id)));
  // Where a new stream starts: after the newest book rendered, then after the last one received.
  let after = Number(list.dataset.lastId) || 0;

  // Reconnecting by hand, when the browser has given up (a 503, say): 1 s, doubled up to 30 s, jittered.
  const FIRST_PAUSE_MS = 1000;
  const LONGEST_PAUSE_MS = 30000;
  let pause = FIRST_PAUSE_MS;
  let source = null;

  function say(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function plural(count, one, many) {
    return `${count} ${count === 1 ? one : many}`;
  }

  // A book's summary, written by a background task: pending, then done (or failed).
  const SUMMARY_TEXT = { pending: "Summary: being written in the background…" };

  function showSummary(item, book) {
    let summary = item.querySelector(".summary");
    if (!summary) {
      summary = document.createElement("p");
      summary.className = "summary";
      item.append(summary);
    }
    summary.dataset.status = book.summary_status;
    summary.textContent = SUMMARY_TEXT[book.summary_status] || book.summary || book.summary_error;
  }

  function updateBook(book) {
    const item = list.querySelector(`li[data-id="${Number(book.id)}"]`);
    if (item) {
      showSummary(item, book);
    }
  }

  // After a reconnect: summaries written meanwhile were announced to the old stream.
  async function refreshPending() {
    for (const summary of list.querySelectorAll('.summary[data-status="pending"]')) {
      try {
        const response = await fetch(`/books/${Number(summary.parentElement.dataset.id)}/`);
        if (response.ok) {
          updateBook(await response.json());
        }
      } catch {
        // offline again: the next reconnect tries again
      }
    }
  }

  function addBook(book) {
    if (!Number.isSafeInteger(book.id) || shown.has(book.id)) {
      return; // already on the page: rendered, or replayed after a reconnect
    }
    shown.add(book.id);
    const item = document.createElement("li");
    item.dataset.id = String(book.id);
    item.className = "arrived";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = book.title;
    const time = document.createElement("time");
    time.dateTime = book.created_at;
    time.textContent = `${book.created_at.slice(0, 10)} ${book.created_at.slice(11, 16)} UTC`;
    item.append(title, " ", time);
    showSummary(item, book);
    // Newest first, by id: books committed together may be announced in either order.
    const older = Array.from(list.children).find((other) => Number(other.dataset.id) < book.id);
    list.insertBefore(item, older || null);
    while (list.children.length > limit) {
      list.lastElementChild.remove();
    }
    document.getElementById("no-books").hidden = true;
  }

  function showStats(stats) {
    document.getElementById("stat-pid").textContent = String(stats.pid);
    document.getElementById("stat-streams").textContent = plural(stats.streams, "open stream", "open streams");
    document.getElementById("stat-threads").textContent = plural(stats.threads, "OS thread", "OS threads");
    document.getElementById("live-stats").hidden = false;
  }

  function connect() {
    say("connecting", "Connecting…");
    source = new EventSource(`/books/stream/?stats=1&after=${after}`);
    let reconnected = false;
    source.addEventListener("open", () => {
      pause = FIRST_PAUSE_MS;
      say("live", "Live: new books appear as they are added.");
      if (reconnected) {
        refreshPending();
      }
      reconnected = true;
    });
    source.addEventListener("book", (event) => {
      const book = JSON.parse(event.data);
      after = book.id; // what the browser itself sends as Last-Event-ID
      addBook(book);
    });
    source.addEventListener("book-update", (event) => updateBook(JSON.parse(event.data)));
    source.addEventListener("stats", (event) => showStats(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CONNECTING) {
        // The stream ended or dropped: the browser reconnects by itself, with Last-Event-ID.
        say("connecting", "Reconnecting…");
        return;
      }
      // Closed for good (an answer that is not a stream, such as a 503): a new one, later.
      source.close();
      const wait = Math.round(pause / 2 + (Math.random() * pause) / 2);
      pause = Math.min(pause * 2, LONGEST_PAUSE_MS);
      say("offline", `Disconnected; trying again in ${Math.ceil(wait / 1000)} s.`);
      setTimeout(connect, wait);
    });
  }

  connect();

  // Staff only: the form posts JSON with the CSRF token, and stays on the page. The new
  // book is not added here: it comes back through the stream, like everyone else's.
  const form = document.getElementById("add-book");
  if (!form) {
    return;
  }
  const field = form.elements.namedItem("title");
  const token = form.elements.namedItem("csrfmiddlewaretoken").value;
  const button = form.querySelector("button[type=submit]");
  const status = document.getElementById("add-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    status.textContent = "Adding…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token },
        body: JSON.stringify({ title: field.value }),
        credentials: "same-origin",
      });
      if (response.status === 201) {
        const book = await response.json();
        field.value = "";
        status.textContent = `Added “${book.title}”.`;
      } else {
        let reason = `the server answered ${response.status}`;
        try {
          reason = (await response.json()).error || reason;
        } catch {
          // not JSON: Django's CSRF refusal is a page; the status says enough
        }
        status.textContent = `Not added: ${reason}.`;
      }
    } catch {
      status.textContent = "Not added: the server could not be reached.";
    } finally {
      button.disabled = false;
      field.focus();
    }
  });
})();
