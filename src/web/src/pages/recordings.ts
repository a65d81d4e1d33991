// Recordings: every terminal session, played back from its asciicast.

import { Terminal } from "@xterm/xterm";
import { api, apiText } from "../api";
import type { RecordingView } from "../contract";
import { badge, h, table, when } from "../dom";

export async function recordingsPage(main: HTMLElement): Promise<() => void> {
  const recordings = await api<RecordingView[]>("GET", "/api/terminal/recordings");
  const player = h("div", { class: "card", hidden: true });
  let playing: { terminal: Terminal; timers: number[] } | null = null;
  const stop = () => {
    playing?.timers.forEach(clearTimeout);
    playing?.terminal.dispose();
    playing = null;
  };
  const play = async (recording: RecordingView) => {
    stop();
    const cast = await apiText("GET", `/api/terminal/recordings/${recording.id}/cast`);
    const [header, ...events] = cast.trim().split("\n").map((line) => JSON.parse(line));
    const screen = h("div", { "aria-label": `Playback of session ${recording.id}` });
    player.hidden = false;
    player.replaceChildren(h("h2", {}, `Session ${recording.id}: ${recording.user}@${recording.machine_id}`), screen);
    const terminal = new Terminal({ cols: header.width, rows: header.height, fontSize: 13 });
    terminal.open(screen);
    // Played at its own pace, long pauses shortened to a second.
    let at = 0;
    let last = 0;
    const timers: number[] = [];
    for (const [time, code, data] of events as [number, string, string][]) {
      at += Math.min(time - last, 1);
      last = time;
      if (code === "o") timers.push(window.setTimeout(() => terminal.write(data), at * 1000));
      if (code === "r") {
        const [cols, rows] = data.split("x").map(Number);
        timers.push(window.setTimeout(() => terminal.resize(cols, rows), at * 1000));
      }
    }
    playing = { terminal, timers };
  };
  main.append(h("h1", {}, "Recordings"),
    table(["Session", "Who", "Machine", "Started", "Ended", ""], recordings.map((r) => {
      const button = h("button", { type: "button" }, "Play");
      button.addEventListener("click", () => void play(r));
      return [`#${r.id}`, r.user, r.machine_id, when(r.started_at), r.end ? badge(r.end.reason) : badge("running"), button];
    }), "Recordings"),
    player);
  return stop;
}
