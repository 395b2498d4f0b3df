// Berth's dashboard: refreshes the task tables every few seconds and follows
// the selected task's log through the status API's server-sent events.
// Log lines are added as text, never as HTML; the tables come rendered and
// escaped from the daemon.
"use strict";

const REFRESH_MS = 5000;
const MAX_LOG_LINES = 2000;

async function refreshTasks(tasks) {
  try {
    const response = await fetch("/dashboard/tasks" + window.location.search, {
      credentials: "same-origin",
      cache: "no-store",
    });
    if (response.ok) {
      tasks.innerHTML = await response.text();
    } else if (response.status === 401) {
      window.location.reload();
    }
  } catch (err) {
    // The daemon may be restarting; the next tick tries again.
  }
}

function followLog(log, state, url) {
  const source = new EventSource(url);
  state.textContent = "(following)";
  source.onmessage = (event) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(event.data + "\n");
    while (log.childNodes.length > MAX_LOG_LINES) {
      log.removeChild(log.firstChild);
    }
    if (atBottom) {
      log.scrollTop = log.scrollHeight;
    }
  };
  source.addEventListener("end", (event) => {
    state.textContent = "(" + event.data + ")";
    source.close();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      state.textContent = "(no live log: the task has no container)";
    } else {
      state.textContent = "(reconnecting)";
    }
  };
}

const tasks = document.getElementById("tasks");
if (tasks) {
  window.setInterval(() => refreshTasks(tasks), REFRESH_MS);
}
const log = document.getElementById("log");
const logState = document.getElementById("log-state");
if (log && logState && log.dataset.follow) {
  followLog(log, logState, log.dataset.follow);
}
