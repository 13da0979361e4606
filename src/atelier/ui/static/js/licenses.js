// Model licences and LoRA training rights as the tabs show them. GET /api/models gives every model
// `license: {name, use, source}` (use: commercial | non-commercial | unknown) and every LoRA `rights`: null, or
// {owner, depicts_people, consent: [{person, reference, date}], notes} (issue 17; service/licenses.py).

import { h } from "./dom.js";

// The badge says the use in words and with a mark, so that it never rests on colour alone.
const USES = {
  commercial: { mark: "✓", text: "commercial", short: "commercial" },
  "non-commercial": { mark: "✕", text: "non-commercial", short: "non-commercial" },
  unknown: { mark: "?", text: "licence unknown", short: "licence unknown" },
};

function useOf(license) {
  return USES[license?.use] ? license.use : "unknown";
}

/** Where the licence record came from, in words (the badge's tooltip). */
export function licenseSource(license) {
  const source = license?.source || "none";
  let text;
  if (source === "none") text = "no licence recorded";
  else if (source === "admin") text = `recorded by an admin${license.declared_by ? ` (${license.declared_by})` : ""}`;
  else if (source === "uploader") text = `given by the uploader${license.declared_by ? ` (${license.declared_by})` : ""}`;
  else text = `from ${source}`;
  return license?.note ? `${text}: ${license.note}` : text;
}

/** "non-commercial", for pickers: what the licence allows, in one or two words. */
export function licenseUseText(license) {
  return USES[useOf(license)].short;
}

/** The licence as a badge (mark and word, coloured) followed by its name. */
export function licenseBadge(license) {
  const use = useOf(license);
  const name = license?.name || "none recorded";
  return h(
    "span",
    { class: "license", "data-use": use, title: `${name} · ${licenseSource(license)}` },
    h("span", { class: `license-badge license-${use}` }, h("span", { "aria-hidden": "true" }, USES[use].mark), ` ${USES[use].text}`),
    h("span", { class: "license-name" }, name),
  );
}

function consentCount(rights) {
  const count = (rights.consent || []).length;
  return `${count} consent${count === 1 ? "" : "s"}`;
}

/** "Acme Retail GmbH · people: yes, 2 consents", or "no rights record". */
export function rightsSummary(rights) {
  if (!rights) return "no rights record";
  const people = rights.depicts_people ? `people: yes, ${consentCount(rights)}` : "people: no";
  return `${rights.owner || "owner unknown"} · ${people}`;
}

/** Each consent on its own line (a tooltip, the provenance panel): "Jane Doe · MR-2026-014 · 2026-02-02". */
export function consentLines(rights) {
  return (rights?.consent || []).map((item) => [item.person, item.reference, item.date].filter(Boolean).join(" · "));
}

/** A LoRA's rights record for a picker: short, with the whole record as the tooltip. */
export function rightsShort(rights) {
  if (!rights) return "no rights record";
  return rights.depicts_people ? `people, ${consentCount(rights)}` : "rights on file";
}

export function rightsTitle(rights) {
  if (!rights) return "No rights record came with this LoRA's training images.";
  return [rightsSummary(rights), ...consentLines(rights), rights.notes].filter(Boolean).join("\n");
}

/** The rights summary as an element: marked when the LoRA has no record. */
export function rightsElement(rights) {
  return h(
    "span",
    { class: rights ? "rights-summary" : "rights-summary rights-missing", title: rightsTitle(rights) },
    rightsSummary(rights),
  );
}
