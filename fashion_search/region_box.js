() => {
  // Drag a box on the photo (#query) to search only that part of it. The box is kept on #query as data-region,
  // "left, top, right, bottom" in the picture's own pixels, and the photo's select event (the click that ends a
  // drag) copies it into the region input (app.py). The browser shows a photo upright (EXIF orientation applied),
  // as the server decodes it, so its pixels are the server's. A click without a drag clears the box.
  const MIN_DRAG = 4; // screen pixels: less is a click, not a box

  const field = () => document.querySelector("#region textarea, #region input");
  const photo = () => document.querySelector("#query img");

  // Where the picture's pixels are drawn inside the <img> element (object-fit contain or fill, centred).
  function frame(img) {
    const rect = img.getBoundingClientRect();
    let sx = rect.width / img.naturalWidth;
    let sy = rect.height / img.naturalHeight;
    const fit = getComputedStyle(img).objectFit;
    if (fit === "contain") sx = sy = Math.min(sx, sy);
    if (fit === "scale-down") sx = sy = Math.min(sx, sy, 1);
    if (fit === "none") sx = sy = 1;
    if (fit === "cover") sx = sy = Math.max(sx, sy);
    const width = img.naturalWidth * sx;
    const height = img.naturalHeight * sy;
    return {left: rect.left + (rect.width - width) / 2, top: rect.top + (rect.height - height) / 2, sx, sy};
  }

  function toPixels(img, event) {
    const f = frame(img);
    const clamp = (value, high) => Math.min(Math.max(value, 0), high);
    return [
      clamp(Math.round((event.clientX - f.left) / f.sx), img.naturalWidth),
      clamp(Math.round((event.clientY - f.top) / f.sy), img.naturalHeight),
    ];
  }

  function parse(text) {
    const numbers = (text || "").replace(/[[\]()]/g, " ").trim().split(/[\s,]+/).map(Number);
    return numbers.length === 4 && numbers.every(Number.isFinite) ? numbers : null;
  }

  function overlay(img) {
    const holder = img.parentElement;
    let box = holder.querySelector(":scope > .region-box");
    if (!box) {
      box = document.createElement("div");
      box.className = "region-box";
      if (getComputedStyle(holder).position === "static") holder.style.position = "relative";
      holder.appendChild(box);
    }
    return box;
  }

  function draw(img, region) {
    const box = overlay(img);
    const valid = region && img.naturalWidth > 0 && region[2] > region[0] && region[3] > region[1];
    box.style.display = valid ? "block" : "none";
    if (!valid) return;
    const f = frame(img);
    const holder = img.parentElement.getBoundingClientRect();
    box.style.left = `${f.left - holder.left + region[0] * f.sx}px`;
    box.style.top = `${f.top - holder.top + region[1] * f.sy}px`;
    box.style.width = `${(region[2] - region[0]) * f.sx}px`;
    box.style.height = `${(region[3] - region[1]) * f.sy}px`;
  }

  // A small picture is drawn larger than its pixels (app.py's CSS): keep them sharp, so the box's edges are seen.
  function sharpen(img) {
    if (img.naturalWidth) img.classList.toggle("upscaled", frame(img).sx > 1);
  }

  function setRegion(text) {
    document.querySelector("#query").dataset.region = text;
  }

  function attach(img) {
    if (img.dataset.regionBox) return;
    img.dataset.regionBox = "1";
    img.draggable = false;
    let start = null;
    img.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || !img.naturalWidth) return;
      event.preventDefault();
      event.stopPropagation();
      img.setPointerCapture(event.pointerId);
      start = {pixels: toPixels(img, event), x: event.clientX, y: event.clientY};
    });
    img.addEventListener("pointermove", (event) => {
      if (!start) return;
      const [x, y] = toPixels(img, event);
      const [x0, y0] = start.pixels;
      draw(img, [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)]);
    });
    const finish = (event) => {
      if (!start) return;
      event.stopPropagation();
      const dragged = Math.abs(event.clientX - start.x) >= MIN_DRAG && Math.abs(event.clientY - start.y) >= MIN_DRAG;
      const [x, y] = toPixels(img, event);
      const [x0, y0] = start.pixels;
      const region = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
      start = null;
      const usable = dragged && region[2] > region[0] && region[3] > region[1];
      setRegion(usable ? region.join(", ") : "");
      draw(img, usable ? region : null);
      // The photo's click is what tells the page (app.py), but a touch drag ends without one, and Gradio drops a
      // click outside the picture (a drag let go past its edge): click its middle.
      const f = frame(img);
      const clientX = f.left + (img.naturalWidth * f.sx) / 2;
      const clientY = f.top + (img.naturalHeight * f.sy) / 2;
      img.dispatchEvent(new MouseEvent("click", {bubbles: true, clientX, clientY}));
    };
    img.addEventListener("pointerup", finish);
    img.addEventListener("pointercancel", finish);
    img.addEventListener("load", () => {
      sharpen(img);
      // A new photo loads before the page has cleared the region input (app.py): the input's box is the last photo's.
      draw(img, img.src === fresh ? null : parse(field()?.value));
      if (img.src === fresh) fresh = null;
    });
  }

  let shown = null; // the photo last seen, to forget its box when another replaces it
  let fresh = null; // a photo that replaced another and has not loaded yet
  function refresh() {
    const img = photo();
    if (img) {
      attach(img);
      sharpen(img);
      if (shown !== img.src) {
        fresh = img.complete ? null : img.src;
        setRegion("");
        draw(img, null);
      }
      shown = img.src;
    } else {
      shown = null;
    }
  }

  new MutationObserver(refresh).observe(document.body, {
    childList: true,
    subtree: true,
    attributes: true,
    attributeFilter: ["src"],
  });
  document.addEventListener("input", (event) => {
    const img = photo();
    if (img && event.target === field()) draw(img, parse(event.target.value));
  });
  window.addEventListener("resize", () => {
    const img = photo();
    if (!img) return;
    sharpen(img);
    draw(img, parse(field()?.value));
  });
  refresh();
}
