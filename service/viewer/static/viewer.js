// The viewer page: a CT in (POST /jobs), its job followed (GET /jobs/{id}), then the CT with the
// liver mask (and, asked for, the confidence) in Niivue, the summary, and the job's downloads.
// Every request goes to this service; an API key typed in the page is sent as X-API-Key.
import { MULTIPLANAR_TYPE, Niivue, SHOW_RENDER, SLICE_TYPE } from "./niivue.min.js";

const LIVER_RGB = [255, 215, 0]; // amber, as the outline in preview.png
const UNSURE_RGB = [255, 40, 40];
const AROUND_LIVER_MM = 10; // confidence is shown in the liver's box and this far around it, not on other organs
const WINDOWS_HU = { abdomen: [400, 40], liver: [150, 60], lung: [1500, -600], bone: [1800, 400] }; // [width, level]
const VIEWS = {
  axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL,
  render: SLICE_TYPE.RENDER, multiplanar: SLICE_TYPE.MULTIPLANAR,
};
// The job's links offered as downloads, in this order; a link this page does not know yet (a new
// output) is listed by its name, so the list is always what the job has.
const DOWNLOADS = new Map([
  ["mask", "Liver mask (NIfTI)"], ["seg", "DICOM SEG"], ["rtstruct", "RT Structure Set (DICOM)"],
  ["probability", "Liver probability (NIfTI)"], ["confidence", "Confidence map (NIfTI)"],
  ["summary", "Summary (JSON)"], ["preview", "Preview (PNG)"], ["ct", "CT (NIfTI)"],
]);
const NOT_DOWNLOADS = new Set(["self"]);
const POLL_MS = 1000;

const $ = (id) => document.getElementById(id);
const page = { job: null, nv: null, confidence: null };
window.liverseg = page; // the page's state, for the console and the browser test

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  return apiKey() ? { "X-API-Key": apiKey() } : {};
}

/** fetch with the API key; a non-2xx answer throws the service's sentence. */
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch { /* not JSON: keep the status line */ }
    if (response.status === 401) detail += " Enter the service's API key above, then drop the CT again.";
    throw new Error(detail);
  }
  return response;
}

function setState(state) {
  document.body.dataset.state = state; // idle, uploading, waiting, loading, ready, error (tests wait on it)
}

function showStatus(text, progress) {
  $("status").hidden = false;
  $("state").textContent = text;
  $("progress").value = progress;
}

function showError(message) {
  $("error").hidden = false;
  $("error").textContent = message;
  setState("error");
}

function seconds(s) {
  return s < 90 ? `${Math.max(1, Math.round(s))} s` : `${Math.round(s / 60)} min`;
}

// ---- upload and follow the job ---------------------------------------------------------------

/** Every file dropped, folders walked (entries are taken before the first await, as the API asks). */
async function droppedFiles(transfer) {
  const entries = [...transfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...transfer.files];
  const files = [];
  async function walk(entry) {
    if (entry.isFile) {
      files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch; (batch = await new Promise((ok, fail) => reader.readEntries(ok, fail))).length;) {
        for (const child of batch) await walk(child);
      }
    }
  }
  for (const entry of entries) await walk(entry);
  return files;
}

async function submit(files) {
  files = files.filter((file) => !file.name.startsWith(".")); // .DS_Store and the like in a folder
  if (!files.length) return;
  $("error").hidden = true;
  $("result").hidden = true;
  setState("uploading");
  const form = new FormData();
  for (const file of files) form.append(files.length === 1 ? "file" : "files", file, file.name);
  const query = $("want-confidence").checked ? "?confidence=true" : "";
  showStatus(`Uploading ${files.length === 1 ? files[0].name : `${files.length} files`}…`, 0);
  try {
    const job = await (await api(`/jobs${query}`, { method: "POST", body: form })).json();
    await follow(job);
  } catch (error) {
    showError(error.message);
  }
}

async function follow(job) {
  setState("waiting");
  for (;;) {
    if (job.state === "done") return showResult(job);
    if (job.state === "failed") throw new Error(job.error ? job.error.detail : "The segmentation failed.");
    let text = job.state === "queued"
      ? `Queued: ${job.queue_position ?? 0} job(s) ahead`
      : `Segmenting: ${Math.round(job.progress * 100)}%`;
    if (job.eta_s != null) text += `, about ${seconds(job.eta_s)} left`;
    showStatus(text, job.progress);
    await new Promise((done) => setTimeout(done, POLL_MS));
    job = await (await api(job.links.self)).json();
  }
}

// ---- the result ------------------------------------------------------------------------------

async function showResult(job) {
  page.job = job;
  page.confidence = null;
  $("result").hidden = false;
  showSummary(job.summary);
  showDownloads(job.links);
  $("confidence-toggle").hidden = !job.links.confidence;
  $("show-confidence").checked = false;
  $("legend-confidence").classList.add("off");
  $("legend-confidence-text").textContent = `confidence below ${job.summary.confidence.threshold}, `
    + `in the liver's box and ${AROUND_LIVER_MM} mm around it`;
  setState("loading");
  showStatus("Loading the CT and the mask into the viewer…", 1);
  await loadViewer(job);
  showStatus(`Done (job ${job.id}).`, 1);
  setState("ready");
}

function item(text, className) {
  const li = document.createElement("li");
  li.textContent = text; // text, never HTML: warnings may quote the uploaded file's header
  if (className) li.className = className;
  return li;
}

function showSummary(summary) {
  const confidence = summary.confidence;
  const hu = summary.liver_mean_hu == null ? "" : `, mean ${summary.liver_mean_hu.toFixed(0)} HU`;
  const figures = document.createElement("ul");
  figures.append(
    item(`Liver ${summary.liver_volume_ml.toFixed(1)} mL${hu}`),
    item(`Confidence in the liver: mean ${confidence.mean_in_liver.toFixed(2)}, `
      + `${(100 * confidence.fraction_below_threshold).toFixed(0)}% below ${confidence.threshold}`),
    item(`Model ${summary.model} on ${summary.device}`),
  );
  $("figures").replaceChildren(figures);
  const review = document.createElement("ul");
  if (summary.review_recommended) {
    review.append(item("Review recommended:", "review-flag"));
    for (const reason of summary.review_reasons) review.append(item(reason.sentence));
  } else {
    review.append(item("No review recommended", "review-clear"));
  }
  for (const note of summary.notes) review.append(item(`Note: ${note.sentence}`));
  for (const warning of summary.input.warnings) review.append(item(`Input: ${warning}`));
  $("review").replaceChildren(review);
}

function showDownloads(links) {
  const names = [...DOWNLOADS.keys()].filter((name) => name in links);
  names.push(...Object.keys(links).filter((name) => !DOWNLOADS.has(name) && !NOT_DOWNLOADS.has(name)));
  $("downloads").replaceChildren(...names.map((name) => {
    const link = Object.assign(document.createElement("a"), { href: links[name], textContent: DOWNLOADS.get(name) || name });
    link.dataset.link = name;
    link.download = "";
    link.addEventListener("click", download);
    const li = document.createElement("li");
    li.append(link);
    return li;
  }));
}

/** With an API key a plain link cannot send it: fetch with the key, then save the body. */
async function download(event) {
  if (!apiKey()) return; // the browser downloads the link itself
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const response = await api(link.getAttribute("href"));
    const disposition = response.headers.get("content-disposition") || "";
    const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] || link.dataset.link;
    const url = URL.createObjectURL(await response.blob());
    const save = Object.assign(document.createElement("a"), { href: url, download: name });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    showError(error.message);
  }
}

// ---- Niivue ----------------------------------------------------------------------------------

/** Clear at the bottom of the colormap (values at or below the layer's cal_min), one opaque
 *  colour above: a layer shows where it is over its cut, drawn at the layer's opacity. */
function solid(rgb) {
  return { R: [0, rgb[0], rgb[0]], G: [0, rgb[1], rgb[1]], B: [0, rgb[2], rgb[2]], A: [0, 255, 255], I: [0, 1, 255] };
}

function windowRange() {
  const [width, level] = WINDOWS_HU[$("window").value];
  return [level - width / 2, level + width / 2];
}

async function loadViewer(job) {
  if (!page.nv) {
    page.nv = new Niivue({
      isRadiologicalConvention: true, // the patient's right on the viewer's left, as in preview.png
      backColor: [0, 0, 0, 1],
      dragAndDropEnabled: false, // a CT dropped on the canvas goes to the service, not into Niivue
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      multiplanarLayout: MULTIPLANAR_TYPE.GRID, // 2 x 2: a thin series' coronal is no sliver in a row of four
      crosshairColor: [0.3, 0.75, 1, 0.8], // blue: neither the mask's amber nor the confidence's red
      show3Dcrosshair: true,
      logLevel: "warn",
    });
    await page.nv.attachToCanvas($("gl"));
    page.nv.addColormap("liverseg-liver", solid(LIVER_RGB));
    page.nv.addColormap("liverseg-unsure", solid(UNSURE_RGB));
  }
  const nv = page.nv;
  const [low, high] = windowRange();
  const headers = authHeaders();
  await nv.loadVolumes([
    { url: job.links.ct, name: "ct.nii.gz", headers, colormap: "gray", cal_min: low, cal_max: high, trustCalMinMax: true },
    {
      url: job.links.mask, name: "liver_mask.nii.gz", headers, colormap: "liverseg-liver",
      cal_min: 0.5, cal_max: 1, trustCalMinMax: true, opacity: Number($("opacity").value),
    },
  ]);
  centreOnLiver(job.summary);
  setView(document.querySelector("#controls button.active").dataset.view);
}

function centreOnLiver(summary) {
  const box = summary.bbox;
  if (!box) return;
  const lps = box.min_lps_mm.map((v, k) => (v + box.max_lps_mm[k]) / 2);
  page.nv.scene.crosshairPos = page.nv.mm2frac([-lps[0], -lps[1], lps[2]]); // Niivue works in RAS
  page.nv.drawScene();
}

function setView(view) {
  for (const button of document.querySelectorAll("#controls button[data-view]")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  page.nv?.setSliceType(VIEWS[view]);
}

/** Low confidence (below the summary's threshold) in red, only in the liver's box and
 *  AROUND_LIVER_MM around it: elsewhere the heads are unsure about other organs, not the liver. */
async function showConfidence(show) {
  const nv = page.nv;
  $("legend-confidence").classList.toggle("off", !show);
  if (!show) {
    if (page.confidence) nv.setOpacity(nv.getVolumeIndexByID(page.confidence.id), 0);
    return;
  }
  if (!page.confidence) {
    const volume = await nv.addVolumeFromUrl({
      url: page.job.links.confidence, name: "liver_confidence.nii.gz", headers: authHeaders(),
      colormap: "liverseg-unsure", opacity: 0,
    });
    unsureAroundLiver(volume, page.job.summary);
    page.confidence = volume;
  }
  nv.setOpacity(nv.getVolumeIndexByID(page.confidence.id), 0.6);
}

/** Replace the volume's float confidence by uint8 unsureness, 255 * (1 - confidence), 0 outside
 *  the liver's surroundings, shown above 255 * (1 - threshold) (uint8: 4x less GPU memory). */
function unsureAroundLiver(volume, summary) {
  const [nx, ny, nz] = volume.hdr.dims.slice(1, 4);
  const box = summary.bbox;
  const margin = summary.input.spacing_xyz_mm.map((mm) => Math.ceil(AROUND_LIVER_MM / mm));
  const lo = box ? box.start_xyz.map((s, k) => s - margin[k]) : [1, 1, 1];
  const hi = box ? box.start_xyz.map((s, k) => s + box.size_xyz[k] - 1 + margin[k]) : [0, 0, 0];
  const confidence = volume.img;
  const unsure = new Uint8Array(confidence.length);
  for (let z = 0, i = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      const rowInside = z >= lo[2] && z <= hi[2] && y >= lo[1] && y <= hi[1];
      for (let x = 0; x < nx; x++, i++) {
        if (rowInside && x >= lo[0] && x <= hi[0]) unsure[i] = Math.round(255 * (1 - confidence[i]));
      }
    }
  }
  volume.img = unsure;
  Object.assign(volume.hdr, { datatypeCode: 2, bitpix: 8, scl_slope: 1, scl_inter: 0 }); // NIfTI DT_UINT8
  const shownAbove = 255 * (1 - summary.confidence.threshold);
  Object.assign(volume, { cal_min: shownAbove, cal_max: 255, global_min: 0, global_max: 255, robust_min: 0, robust_max: 255 });
}

// ---- wiring ----------------------------------------------------------------------------------

function wire() {
  const drop = $("drop"); // the whole page takes a drop; the zone shows where
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    submit(await droppedFiles(event.dataTransfer));
  });
  $("file-input").addEventListener("change", (event) => submit([...event.target.files]));
  $("folder-input").addEventListener("change", (event) => submit([...event.target.files]));
  $("api-key").value = sessionStorage.getItem("liverseg-api-key") || "";
  $("api-key").addEventListener("change", () => sessionStorage.setItem("liverseg-api-key", apiKey()));
  for (const button of document.querySelectorAll("#controls button[data-view]")) {
    button.addEventListener("click", () => setView(button.dataset.view));
  }
  $("window").addEventListener("change", () => {
    const ct = page.nv?.volumes[0];
    if (!ct) return;
    [ct.cal_min, ct.cal_max] = windowRange();
    page.nv.updateGLVolume();
  });
  $("opacity").addEventListener("input", (event) => page.nv?.setOpacity(1, Number(event.target.value)));
  $("show-confidence").addEventListener("change", (event) => {
    showConfidence(event.target.checked).catch((error) => showError(error.message));
  });
  setState("idle");
}

wire();
