// clipkit serve: three views over the JSON API (see clipkit/serve/app.py). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
let dropped = [];  // files dropped on the classify view (the file input holds the chosen ones)

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function post(url, form) {
  showError("");
  $("busy").hidden = false;
  try {
    const response = await fetch(url, { method: "POST", body: form });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error((data && data.error) || `the server answered ${response.status}`);
    }
    return data;
  } catch (e) {
    showError(e.message || String(e));
    return null;
  } finally {
    $("busy").hidden = true;
  }
}

// -- tabs ---------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + tab.dataset.view;
    showError("");
  });
}

// -- info ---------------------------------------------------------------------
let info = { max_upload_bytes: Infinity };
fetch("/api/info").then((r) => r.json()).then((data) => {
  info = data;
  for (const name of data.class_sets || []) $("classify-set").append(el("option", { value: name }, name));
  const status = $("search-status");
  if (!data.index) status.textContent = "No index loaded: start the server with clipkit serve --index INDEX.";
  else if (data.index.error) status.textContent = data.index.error;
  else status.textContent = `${data.index.images} images indexed (model ${data.index.model}).`;
}).catch(() => showError("cannot reach the server"));

// -- classify -----------------------------------------------------------------
function chosenFiles() {
  return [...$("classify-files").files, ...dropped];
}

function listChosen() {
  $("classify-chosen").textContent = chosenFiles().map((f) => f.name).join(", ");
}

$("classify-files").addEventListener("change", listChosen);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  dropped.push(...[...e.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
  listChosen();
});

$("classify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = chosenFiles();
  if (!files.length) { showError("choose or drop at least one image"); return; }
  const size = files.reduce((n, f) => n + f.size, 0);
  if (size > info.max_upload_bytes) {
    showError(`upload too large: the limit is ${(info.max_upload_bytes / 1048576).toFixed(1)} MB`);
    return;
  }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("labels", $("classify-labels").value);
  form.append("classset", $("classify-set").value);
  const data = await post("/api/classify", form);
  const out = $("classify-results");
  out.replaceChildren();
  if (!data) return;
  data.results.forEach((r, i) => {
    const card = el("div", { class: "result", "data-name": r.name });
    if (files[i]) card.append(el("img", { src: URL.createObjectURL(files[i]), alt: r.name }));
    card.append(el("h3", {}, r.name));
    for (const t of r.top) {
      const pct = (100 * t.probability).toFixed(1);
      const bar = el("div", { class: "bar", "data-label": t.label, "data-prob": String(t.probability) },
        el("div", { class: "fill", style: `width:${pct}%` }),
        el("div", { class: "text" }, `${t.label} ${pct}%`));
      card.append(bar);
    }
    out.append(card);
  });
});

// -- generate -----------------------------------------------------------------
$("generate-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const data = await post("/api/generate", new FormData($("generate-form")));
  const out = $("generate-results");
  out.replaceChildren();
  if (!data) return;
  data.images.forEach((im, rank) => {
    out.append(el("div", { class: "cell", "data-score": String(im.score) },
      el("img", { src: im.src, alt: `${data.caption}, sample ${im.sample}` }),
      el("div", { class: "score" }, `#${rank + 1}  ${im.score.toFixed(3)}`)));
  });
});

// -- search -------------------------------------------------------------------
$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData();
  form.append("text", $("search-text").value);
  form.append("k", $("search-k").value);
  const file = $("search-file").files[0];
  if (file) form.append("image", file, file.name);
  const data = await post("/api/search", form);
  const out = $("search-results");
  out.replaceChildren();
  if (!data) return;
  if (!data.hits.length) out.append(el("p", { class: "note" }, "no hits"));
  for (const h of data.hits) {
    out.append(el("div", { class: "cell hit", "data-path": h.path, "data-score": String(h.score) },
      el("img", { src: h.src, alt: h.path }),
      el("div", { class: "path" }, h.path),
      el("div", { class: "score" }, h.score.toFixed(3))));
  }
});
