// Painting an inpainting mask over the image. The canvas has the image's own pixel size (so the mask matches
// the image the API receives), and is stretched over the picture on screen; strokes are kept as opaque pixels
// and shown through the canvas' transparency.

const STROKE_COLOUR = "rgb(64, 140, 255)";
const UNDO_LIMIT = 30;

export class MaskEditor extends EventTarget {
  constructor(container) {
    super();
    this.container = container;
    this.image = container.querySelector("img");
    this.canvas = container.querySelector("canvas");
    this.cursor = container.querySelector(".brush-cursor");
    this.context = this.canvas.getContext("2d", { willReadFrequently: true });
    this.tool = "brush";
    this.brushSize = 36;
    this.readOnlyValue = false;
    this.undoStack = [];
    this.last = null;
    this.painted = false;
    this.canvas.addEventListener("pointerdown", (event) => this.start(event));
    this.canvas.addEventListener("pointermove", (event) => this.move(event));
    this.canvas.addEventListener("pointerup", (event) => this.end(event));
    this.canvas.addEventListener("pointercancel", (event) => this.end(event));
    this.canvas.addEventListener("pointerleave", () => {
      this.cursor.style.display = "none";
    });
  }

  get readOnly() {
    return this.readOnlyValue;
  }

  /** An uploaded mask is shown, not painted on. */
  set readOnly(value) {
    this.readOnlyValue = value;
    this.container.dataset.readonly = String(value);
  }

  get hasImage() {
    return this.canvas.width > 0 && this.container.dataset.empty !== "true";
  }

  /** Show a new image (an object or data URL of width x height pixels); the mask starts empty. */
  setImage(url, width, height) {
    this.image.src = url;
    this.canvas.width = width;
    this.canvas.height = height;
    this.container.style.setProperty("--ratio", String(width / height));
    this.container.dataset.empty = "false";
    this.clear({ remember: false });
    this.undoStack = [];
  }

  /** Show nothing: the picture was refused, so neither it nor its mask may be used any more. */
  removeImage() {
    this.image.removeAttribute("src");
    this.clear({ remember: false });
    this.undoStack = [];
    this.container.dataset.empty = "true";
  }

  /** Show an uploaded mask (white = repaint) instead of a painted one. */
  showMask(maskImage) {
    const { width, height } = this.canvas;
    const scratch = document.createElement("canvas");
    scratch.width = width;
    scratch.height = height;
    const scratchContext = scratch.getContext("2d", { willReadFrequently: true });
    scratchContext.drawImage(maskImage, 0, 0, width, height);
    const source = scratchContext.getImageData(0, 0, width, height);
    const overlay = this.context.createImageData(width, height);
    for (let index = 0; index < source.data.length; index += 4) {
      const brightness = (source.data[index] + source.data[index + 1] + source.data[index + 2]) / 3;
      overlay.data.set([64, 140, 255, brightness >= 128 ? 255 : 0], index);
    }
    this.context.putImageData(overlay, 0, 0);
  }

  /** The painted pixels, to put back later with restore(). */
  snapshot() {
    return this.canvas.width ? this.context.getImageData(0, 0, this.canvas.width, this.canvas.height) : null;
  }

  restore(pixels) {
    if (pixels && pixels.width === this.canvas.width && pixels.height === this.canvas.height) {
      this.context.putImageData(pixels, 0, 0);
    } else {
      this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    }
    this.painted = this.hasMask();
    this.dispatchEvent(new Event("change"));
  }

  clear({ remember = true } = {}) {
    if (remember) this.remember();
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
    this.dispatchEvent(new Event("change"));
  }

  undo() {
    const previous = this.undoStack.pop();
    if (!previous) return;
    this.context.putImageData(previous, 0, 0);
    this.painted = this.hasMask();
    this.dispatchEvent(new Event("change"));
  }

  remember() {
    if (!this.canvas.width) return;
    this.undoStack.push(this.context.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
  }

  /** Image pixels per screen pixel: brush sizes are chosen on screen, painted in image pixels. */
  scale() {
    const rect = this.canvas.getBoundingClientRect();
    return rect.width ? this.canvas.width / rect.width : 1;
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (this.canvas.width / rect.width),
      y: (event.clientY - rect.top) * (this.canvas.height / rect.height),
    };
  }

  start(event) {
    if (this.readOnly || !this.hasImage || event.button !== 0) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.remember();
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    this.placeCursor(event);
    if (!this.last) return;
    const next = this.point(event);
    this.stroke(this.last, next);
    this.last = next;
  }

  end(event) {
    if (!this.last) return;
    if (this.canvas.hasPointerCapture(event.pointerId)) this.canvas.releasePointerCapture(event.pointerId);
    this.last = null;
    this.painted = this.hasMask();
    this.dispatchEvent(new Event("change"));
  }

  stroke(from, to) {
    const context = this.context;
    context.save();
    context.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    context.strokeStyle = STROKE_COLOUR;
    context.fillStyle = STROKE_COLOUR;
    context.lineWidth = this.brushSize * this.scale();
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
    context.restore();
  }

  placeCursor(event) {
    if (this.readOnly || !this.hasImage) return;
    const rect = this.container.getBoundingClientRect();
    this.cursor.style.display = "block";
    this.cursor.style.width = `${this.brushSize}px`;
    this.cursor.style.height = `${this.brushSize}px`;
    this.cursor.style.left = `${event.clientX - rect.left}px`;
    this.cursor.style.top = `${event.clientY - rect.top}px`;
  }

  hasMask() {
    if (!this.canvas.width) return false;
    const { data } = this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let index = 3; index < data.length; index += 4) {
      if (data[index] >= 128) return true;
    }
    return false;
  }

  /** The painted mask as a black and white PNG data URL, the size of the image. */
  toDataUrl() {
    const { width, height } = this.canvas;
    const painted = this.context.getImageData(0, 0, width, height);
    const output = document.createElement("canvas");
    output.width = width;
    output.height = height;
    const outputContext = output.getContext("2d");
    const mask = outputContext.createImageData(width, height);
    for (let index = 0; index < painted.data.length; index += 4) {
      // Anti-aliased stroke edges count from half opacity, so the mask has clean edges; mask blur softens them.
      const value = painted.data[index + 3] >= 128 ? 255 : 0;
      mask.data.set([value, value, value, 255], index);
    }
    outputContext.putImageData(mask, 0, 0);
    return output.toDataURL("image/png");
  }
}
