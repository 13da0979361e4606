// Errors shown next to the field that caused them. The API names the field of every 4xx answer; a form maps
// that name onto the element marked data-field="<name>" (with aliases where the page names a field
// differently), and falls back to the form's general error line.

let errorCount = 0;

function visible(element) {
  return element.offsetParent !== null || element.getClientRects().length > 0;
}

export function clearErrors(root) {
  for (const field of root.querySelectorAll(".has-error")) {
    field.classList.remove("has-error");
    const message = field.querySelector(":scope > .field-error");
    if (message) message.remove();
    for (const input of field.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }
  for (const line of root.querySelectorAll(".form-error")) line.textContent = "";
}

/** Show ``message`` at the field named ``name`` inside ``root``; returns false when no such field shows. */
export function showFieldError(root, name, message) {
  const field = name ? root.querySelector(`[data-field="${CSS.escape(name)}"]`) : null;
  if (!field || !visible(field)) return false;
  field.classList.add("has-error");
  let line = field.querySelector(":scope > .field-error");
  if (!line) {
    errorCount += 1;
    line = document.createElement("p");
    line.className = "field-error";
    line.id = `field-error-${errorCount}`;
    line.setAttribute("role", "alert");
    field.append(line);
  }
  line.textContent = message;
  const input = field.matches("input, select, textarea") ? field : field.querySelector("input:not([type=hidden]), select, textarea");
  if (input) {
    input.setAttribute("aria-invalid", "true");
    const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (!described.includes(line.id)) input.setAttribute("aria-describedby", [...described, line.id].join(" "));
  }
  field.scrollIntoView({ block: "nearest" });
  return true;
}

/** Show an API error in ``root``: at its field when the page has it, otherwise on the form's error line. */
export function showError(root, error, aliases = {}) {
  const name = error.field ? aliases[error.field] ?? error.field : null;
  if (showFieldError(root, name, error.message)) return;
  const line = root.querySelector(".form-error");
  if (line) line.textContent = error.message;
}
