// The playground: a plain ES module that drives content's public API with the token the user gives it.
// The token lives in this tab's sessionStorage and travels only in the Authorization header; nothing here logs.

const API = "/api/v1/content";
const TOKEN_KEY = "vixenbliss.playground.token";
const FINAL = new Set(["completed", "failed", "canceled"]);
const NUMBER_FIELDS = ["width", "height", "steps", "cfg", "lora_scale", "seed"];
const MAX_SEED = 4294967295;

const $ = (id) => document.getElementById(id);
const gallery = { cursor: null, load: 0 };

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `the API answered ${status}`);
    this.status = status;
    this.fields = (body && body.details && body.details.fields) || [];
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${token()}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { error: `could not reach the API (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, data);
  }
  return data;
}

// ---- token, limits, avatars -------------------------------------------------------------------------------

function setTokenStatus(text, ok) {
  const line = $("token-status");
  line.textContent = text;
  line.className = `status-line ${ok ? "ok" : "bad"}`;
}

async function useToken() {
  const value = $("token").value.trim();
  if (!value) {
    setTokenStatus("paste or mint a token first", false);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, value);
  await start();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  setTokenStatus("token forgotten", true);
}

async function start() {
  try {
    showLimits(await api(`${API}/limits`));
    const count = await loadAvatars();
    if (count === 0) {
      // Avatars are made through identity's API; `make playground` makes one with a tiny LoRA for the token's owner.
      setTokenStatus("token accepted, but its owner has no avatar yet: run `make playground SUB=<you>`", false);
    } else {
      setTokenStatus(`token accepted · ${count} avatar(s) known to content`, true);
    }
  } catch (error) {
    setTokenStatus(`token refused: ${error.message}`, false);
    return;
  }
  await loadGallery(true);
}

function showLimits(limits) {
  const bounds = {
    prompt: `1–${limits.max_prompt_length} characters`,
    width: `${limits.min_side}–${limits.max_side}, multiple of ${limits.side_multiple_of}`,
    height: `${limits.min_side}–${limits.max_side}, multiple of ${limits.side_multiple_of}`,
    steps: `1–${limits.max_steps}; width × height × steps ≤ ${limits.max_pixel_steps.toLocaleString("en")}`,
    cfg: `${limits.cfg_range.min}–${limits.cfg_range.max}`,
    lora_scale: `${limits.lora_scale_range.min}–${limits.lora_scale_range.max}; empty: the LoRA's default`,
    seed: `0–${MAX_SEED}; empty: random`,
  };
  for (const [name, text] of Object.entries(bounds)) {
    const element = document.querySelector(`[data-bounds="${name}"]`);
    if (element) element.textContent = text;
  }
}

async function loadAvatars() {
  const select = $("avatar");
  const previous = select.value;
  const page = await api(`${API}/avatars?limit=100`);
  select.replaceChildren();
  for (const avatar of page.items) {
    const option = document.createElement("option");
    option.value = avatar.id;
    option.textContent = `${avatar.name} · ${avatar.id.slice(0, 8)}${avatar.ready ? "" : " · no ready LoRA yet"}`;
    select.append(option);
  }
  const ready = page.items.find((avatar) => avatar.ready);
  if (page.items.some((avatar) => avatar.id === previous)) select.value = previous;
  else if (ready) select.value = ready.id;
  return page.items.length;
}

// ---- the form and its errors --------------------------------------------------------------------------------

// A number when the text is one; the text itself otherwise, so that the API says what is wrong with it.
function numberOrText(text) {
  const trimmed = text.trim();
  if (trimmed === "") return null;
  const number = Number(trimmed);
  return Number.isFinite(number) ? number : trimmed;
}

function formBody() {
  const body = {
    avatar_id: $("avatar").value,
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
  };
  for (const name of NUMBER_FIELDS) {
    const value = numberOrText($(name).value);
    // Absent sizes, steps and cfg take the API's defaults; a null seed or scale asks for a random seed or the
    // LoRA's default scale.
    if (value !== null || name === "seed" || name === "lora_scale") body[name] = value;
  }
  return body;
}

function clearErrors() {
  $("form-error").textContent = "";
  for (const element of document.querySelectorAll(".field-error")) element.textContent = "";
  for (const element of document.querySelectorAll(".invalid")) element.classList.remove("invalid");
}

// The API's message, and each refused field next to its input (names are the API's: width, height, ...).
function showApiError(error, prefix = "") {
  const lines = [prefix + error.message];
  for (const { field, reason } of error.fields) {
    const slot = prefix ? null : $(`error-${field}`);
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${reason}` : reason;
      const input = slot.closest(".field").querySelector("input, textarea, select");
      if (input) input.classList.add("invalid");
    } else {
      lines.push(`${field}: ${reason}`);
    }
  }
  $("form-error").textContent = lines.join(" · ");
  if (error.status === 401) setTokenStatus(`token refused: ${error.message}`, false);
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function scaleTitle(scale) {
  if (scale === null || scale === undefined) return "LoRA at its default scale";
  return scale === 0 ? "without the LoRA (scale 0)" : `LoRA scale ${scale}`;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const first = formBody();
  const bodies = [first];
  if ($("compare").checked) {
    // Both runs share one seed, so that only the LoRA scale differs.
    if (first.seed === null) first.seed = randomSeed();
    bodies.push({ ...first, lora_scale: numberOrText($("lora_scale_b").value) });
  }
  const button = $("submit");
  button.disabled = true;
  try {
    for (const [index, body] of bodies.entries()) {
      let generation;
      try {
        generation = await api(`${API}/generate`, {
          method: "POST",
          body,
          headers: { "Idempotency-Key": crypto.randomUUID() },
        });
      } catch (error) {
        showApiError(error, index === 0 ? "" : "side-by-side run refused: ");
        return;
      }
      if (index === 0) $("runs").replaceChildren();
      follow(newRunCard(bodies.length > 1 ? scaleTitle(body.lora_scale) : "Generation"), generation);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- one run: progress from the event stream, the image, cancel ----------------------------------------------

function newRunCard(title) {
  const card = $("run-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".run-title").textContent = title;
  $("runs").append(card);
  return card;
}

function seconds(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(2)} s`;
}

function addStatus(card, status, at, generation) {
  const list = card.querySelector(".progress");
  if (list.querySelector(`li[data-status="${status}"]`)) return;
  const item = document.createElement("li");
  item.dataset.status = status;
  const since = (Date.parse(at) - Date.parse(generation.created_at)) / 1000;
  let text = `${status} · +${since.toFixed(2)} s`;
  if (FINAL.has(status)) {
    const timings = generation.timings;
    text += ` · queue wait ${seconds(timings.queue_wait_seconds)}, worker ${seconds(timings.worker_seconds)}, total ${seconds(timings.total_seconds)}`;
  }
  item.textContent = text;
  list.append(item);
  card.dataset.status = status;
}

function describe(generation) {
  const p = generation.params;
  return (
    `seed ${generation.seed} · ${p.width}×${p.height} · ${p.steps} steps · cfg ${p.cfg} · ` +
    `LoRA scale ${p.lora_scale ?? "default"} · “${p.prompt}”` +
    (p.negative_prompt ? ` · not “${p.negative_prompt}”` : "")
  );
}

function render(card, generation) {
  card.querySelector(".caption").textContent = `${describe(generation)} · id ${generation.id}`;
  const image = card.querySelector("img");
  if (generation.image && image.hidden) {
    image.src = generation.image.url;
    image.hidden = false;
  }
  if (generation.error) {
    card.querySelector(".run-error").textContent = `${generation.error.error_code}: ${generation.error.message}`;
  }
  card.querySelector(".cancel").hidden = FINAL.has(generation.status);
}

function follow(card, generation) {
  card.dataset.id = generation.id;
  render(card, generation);
  // EventSource cannot send the token: the generation's signed events_url is the stream's credential.
  const events = new EventSource(generation.events_url);
  events.addEventListener("status", (message) => {
    const event = JSON.parse(message.data);
    addStatus(card, event.status, event.at, event.generation);
    render(card, event.generation);
    if (FINAL.has(event.status)) {
      events.close();
      loadGallery(true);
    }
  });
  events.onerror = () => {
    // CLOSED: the stream was refused (its signed link expired, say), not merely cut (EventSource reconnects then).
    if (events.readyState === EventSource.CLOSED && !FINAL.has(card.dataset.status)) {
      pollUntilFinal(card);
    }
  };
  card.querySelector(".cancel").addEventListener("click", async (click) => {
    click.target.disabled = true;
    try {
      const canceled = await api(`${API}/${generation.id}/cancel`, { method: "POST" });
      addStatus(card, canceled.status, canceled.finished_at || canceled.updated_at, canceled);
      render(card, canceled);
      events.close();
      loadGallery(true);
    } catch (error) {
      card.querySelector(".run-error").textContent = error.message;
      click.target.disabled = false;
    }
  });
}

// Without the stream: ask with the token, each answer held until the generation changes or 30 s pass.
async function pollUntilFinal(card) {
  card.querySelector(".run-error").textContent = "the event stream was refused; following with the token instead";
  while (!FINAL.has(card.dataset.status)) {
    let generation;
    try {
      generation = await api(`${API}/${card.dataset.id}`, { headers: { Prefer: "wait=30" } });
    } catch (error) {
      card.querySelector(".run-error").textContent = error.message;
      return;
    }
    addStatus(card, "queued", generation.created_at, generation);
    if (generation.started_at) addStatus(card, "running", generation.started_at, generation);
    if (FINAL.has(generation.status)) {
      addStatus(card, generation.status, generation.finished_at || generation.updated_at, generation);
    }
    render(card, generation);
  }
  card.querySelector(".run-error").textContent = "";
  loadGallery(true);
}

// ---- the gallery: keyset pages, "same seed again" ------------------------------------------------------------

async function loadGallery(reset) {
  const load = ++gallery.load;
  const size = Number.parseInt($("page-size").value, 10) || 8;
  const query = new URLSearchParams({ limit: String(size) });
  if (!reset && gallery.cursor) query.set("cursor", gallery.cursor);
  let page;
  try {
    page = await api(`${API}?${query}`);
  } catch (error) {
    $("gallery-error").textContent = error.message;
    return;
  }
  if (load !== gallery.load) return; // a newer load started meanwhile: its answer wins
  $("gallery-error").textContent = "";
  if (reset) $("gallery").replaceChildren();
  for (const generation of page.items) $("gallery").append(galleryItem(generation));
  gallery.cursor = page.next_cursor;
  $("gallery-more").hidden = !page.next_cursor;
}

function galleryItem(generation) {
  const item = $("gallery-item-template").content.firstElementChild.cloneNode(true);
  item.dataset.id = generation.id;
  item.dataset.status = generation.status;
  if (generation.image) {
    const image = item.querySelector("img");
    image.src = generation.image.url;
    image.alt = `generation ${generation.id}`;
    image.hidden = false;
  }
  item.querySelector(".meta").textContent = `${generation.status} · ${describe(generation)}`;
  item.querySelector(".again").addEventListener("click", () => sameSeedAgain(generation));
  return item;
}

function sameSeedAgain(generation) {
  const p = generation.params;
  if ([...$("avatar").options].some((option) => option.value === generation.avatar_id)) {
    $("avatar").value = generation.avatar_id;
  }
  $("prompt").value = p.prompt;
  $("negative_prompt").value = p.negative_prompt;
  for (const name of ["width", "height", "steps", "cfg"]) $(name).value = String(p[name]);
  $("lora_scale").value = p.lora_scale === null || p.lora_scale === undefined ? "" : String(p.lora_scale);
  $("seed").value = String(generation.seed);
  clearErrors();
  $("compose").scrollIntoView({ behavior: "smooth" });
}

// ---- wiring --------------------------------------------------------------------------------------------------

function init() {
  $("token").value = token();
  $("token-use").addEventListener("click", useToken);
  $("token").addEventListener("keydown", (event) => {
    if (event.key === "Enter") useToken();
  });
  $("token-forget").addEventListener("click", forgetToken);
  $("avatars-reload").addEventListener("click", () => loadAvatars().catch((error) => showApiError(error)));
  $("generate-form").addEventListener("submit", submit);
  $("gallery-reload").addEventListener("click", () => loadGallery(true));
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  document.body.dataset.ready = "true";
  if (token()) start();
}

init();
