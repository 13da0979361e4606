// The training loss as a small SVG line chart: raw losses faint, their running average on top.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 200;
const PAD = { left: 44, right: 10, top: 10, bottom: 22 };
const SMOOTHING = 0.8;

function node(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function smooth(points) {
  let average = null;
  return points.map(([step, loss]) => {
    average = average === null ? loss : SMOOTHING * average + (1 - SMOOTHING) * loss;
    return [step, average];
  });
}

/** Draw ``points`` ([[step, loss], ...]) into ``svg``. */
export function drawLossChart(svg, points) {
  svg.replaceChildren();
  if (!points.length) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "chart-empty" }, "The loss appears after the first steps."));
    return;
  }
  const steps = points.map(([step]) => step);
  const losses = points.map(([, loss]) => loss);
  const minStep = Math.min(...steps);
  const maxStep = Math.max(...steps, minStep + 1);
  let low = Math.min(...losses);
  let high = Math.max(...losses);
  if (high - low < 1e-9) {
    high += 0.5;
    low -= 0.5;
  }
  const x = (step) => PAD.left + ((step - minStep) / (maxStep - minStep)) * (WIDTH - PAD.left - PAD.right);
  const y = (loss) => PAD.top + (1 - (loss - low) / (high - low)) * (HEIGHT - PAD.top - PAD.bottom);
  const path = (list) => list.map(([step, loss], index) => `${index ? "L" : "M"}${x(step).toFixed(1)},${y(loss).toFixed(1)}`).join(" ");

  for (const value of [low, (low + high) / 2, high]) {
    svg.append(node("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value), class: "chart-grid" }));
    svg.append(node("text", { x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end", class: "chart-label" }, value.toFixed(3)));
  }
  svg.append(node("text", { x: PAD.left, y: HEIGHT - 6, class: "chart-label" }, `step ${minStep}`));
  svg.append(node("text", { x: WIDTH - PAD.right, y: HEIGHT - 6, "text-anchor": "end", class: "chart-label" }, `step ${maxStep}`));
  svg.append(node("path", { d: path(points), class: "chart-raw" }));
  svg.append(node("path", { d: path(smooth(points)), class: "chart-line" }));
  if (points.length === 1) {
    svg.append(node("circle", { cx: x(points[0][0]), cy: y(points[0][1]), r: 3, class: "chart-dot" }));
  }
}
