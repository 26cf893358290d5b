// The page of `shufflenet serve`: no framework, no build step, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const drop = $("drop"), fileInput = $("file"), errorBox = $("error"), results = $("results");

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function showError(message) {
  $("figure").hidden = true;  // an image the server could not read is not shown as if it had been
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function describeFailure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    const text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    detail = (body.error ? body.error + ": " : "") + text;
  } catch (_) { /* not JSON: keep the status text */ }
  if (response.status === 401) $("key-row").hidden = false;
  return "Error " + response.status + ": " + detail;
}

async function loadCard() {
  const response = await fetch("/v1/model", { headers: authHeaders() });
  if (!response.ok) {
    $("card").textContent = await describeFailure(response);
    if (response.status === 503) setTimeout(loadCard, 1000);
    return;
  }
  const card = await response.json();
  const rows = [
    ["model", card.name],
    ["weights", card.weights],
    ["runtime", card.backend + " / " + card.precision + " (" + card.runtime_threads + " threads)"],
    ["classes", card.num_classes + ": " + card.classes.slice(0, 12).join(", ") + (card.num_classes > 12 ? ", …" : "")],
    ["input", card.preprocessing.crop_size + " × " + card.preprocessing.crop_size + " px"],
    ["validation top-1", card.val_accuracy == null ? "not recorded" : (100 * card.val_accuracy).toFixed(1) + " %"],
  ];
  const list = document.createElement("dl");
  for (const [name, value] of rows) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    list.append(dt, dd);
  }
  $("card").replaceChildren(list);
}

function showResults(prediction) {
  results.replaceChildren();
  for (const entry of prediction.top_k) {
    const percent = 100 * entry.probability;
    const li = document.createElement("li");
    li.className = "row";
    li.setAttribute("aria-label", entry.label + " " + percent.toFixed(1) + " percent");
    const label = document.createElement("span"), bar = document.createElement("span");
    const fill = document.createElement("span"), pct = document.createElement("span");
    label.className = "label"; bar.className = "bar"; fill.className = "fill"; pct.className = "pct";
    label.textContent = entry.label;
    fill.style.width = percent.toFixed(1) + "%";
    fill.style.display = "block";
    pct.textContent = percent.toFixed(1) + " %";
    bar.append(fill);
    li.append(label, bar, pct);
    results.append(li);
  }
}

async function classify(file) {
  errorBox.hidden = true;
  results.replaceChildren();
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("figure").hidden = false;
  $("latency").textContent = "classifying…";
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/classify?top_k=5", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream", ...authHeaders() },
      body: file,
    });
  } catch (err) {
    $("latency").textContent = "";
    showError("Cannot reach the server: " + err);
    return;
  }
  const roundTrip = performance.now() - started;
  if (!response.ok) {
    $("latency").textContent = "";
    showError(await describeFailure(response));
    return;
  }
  const answer = await response.json();
  showResults(answer.predictions[0]);
  const t = answer.timings_ms;
  $("latency").textContent = "latency " + roundTrip.toFixed(0) + " ms (server " + t.total.toFixed(1) +
    " ms: inference " + t.inference.toFixed(1) + " ms in a batch of " + answer.batch_sizes[0] + ")";
}

drop.addEventListener("click", (event) => { if (event.target !== fileInput) fileInput.click(); });
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
fileInput.addEventListener("change", () => { if (fileInput.files.length) classify(fileInput.files[0]); });
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.kind === "file");
  if (item) classify(item.getAsFile());
});
$("api-key").addEventListener("change", loadCard);
loadCard();
