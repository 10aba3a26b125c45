"""The page in a real browser: headless Debian Chromium driven by Playwright, an upload through the file input."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_runner import AppProcess, app_env, build_random_weights_bundle, free_port, launch_app
from conftest import CHROMIUM, NEEDS_CHROMIUM, reference_top_k, similar_reference
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from fashion_search.bundle import load_bundle
from fashion_search.imaging import ImageError, open_image

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]  # starts the app and headless Chromium

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000  # generous: the first query on a busy 2-core machine
ALL_IMAGES_LOADED = """n => {
    const images = [...document.querySelectorAll('#products img')];
    return images.length === n && images.every(img => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def app_url(bundle_dir, weights_file) -> str:
    return launch_app(bundle_dir, weights_file)[1]


@pytest.fixture()
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        context.close()
        browser.close()


def upload_and_submit(page: Page, path: Path) -> None:
    page.set_input_files("#query input[type=file]", str(path))
    page.locator("#query img[src*='gradio_api/file=']").wait_for(state="attached")  # uploaded: the preview shows it
    page.get_by_role("button", name="Submit").click()


def test_upload_shows_five_similar_products_with_captions(page, app_url, catalogue, bundle_dir, tmp_path):
    # A catalogue product photographed again, as it were: re-encoded and resized.
    original = Image.open(catalogue / "images" / "1006.jpg").convert("RGB")
    query = tmp_path / "my-photo.jpg"
    original.resize((original.width * 3, original.height * 3)).save(query, quality=80)

    page.goto(app_url)
    page.get_by_text("Fashion visual search").first.wait_for()
    upload_and_submit(page, query)
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)

    screenshot = tmp_path / "results.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")

    sizes = page.eval_on_selector_all(
        "#products img", "images => images.map(img => [img.naturalWidth, img.naturalHeight])"
    )
    assert len(sizes) == 5 and all(w > 0 and h > 0 for w, h in sizes)
    source = Image.open(bundle_dir / "images" / "1006.jpg")
    assert sizes[0] == [source.width, source.height]
    captions = page.locator("#products .caption-label").all_inner_texts()
    assert len(captions) == 5
    bundle = load_bundle(bundle_dir)
    assert captions[0].startswith(bundle.metadata[bundle.filenames.index("1006.jpg")]["productDisplayName"] + "\n")
    assert all("distance " in caption for caption in captions)


def test_a_click_on_a_result_searches_with_that_product(page, app_url, catalogue, bundle_dir, tmp_path):
    """The clicked product becomes the query, and the results are its nearest other products."""
    shown = "images => images.map(img => decodeURIComponent(img.src).split('/').pop())"
    page.goto(app_url)
    upload_and_submit(page, catalogue / "images" / "1006.jpg")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    clicked = page.eval_on_selector_all("#products img", shown)[1]
    page.locator("#products img").nth(1).click()
    page.wait_for_function(
        "name => decodeURIComponent(document.querySelector('#query img')?.src || '').endsWith('/' + name)", arg=clicked
    )
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    screenshot = tmp_path / "more-like-this.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    expected = similar_reference(load_bundle(bundle_dir), clicked, 5)[0]
    same = f"expected => ({shown})([...document.querySelectorAll('#products img')]).join() === expected.join()"
    page.wait_for_function(same, arg=expected)
    expect(page.locator("#products .thumbnail-item.selected")).to_have_count(0)  # the new results: none picked yet
    # The query is named: the clicked product's name and details label the photo; a new upload takes them away.
    bundle = load_bundle(bundle_dir)
    product = bundle.metadata[bundle.filenames.index(clicked)]
    details = " · ".join(product[column] for column in ("articleType", "baseColour", "gender"))
    label = page.locator("#query > label[data-testid='block-label']")
    expect(label).to_have_text(f"More like this: {product['productDisplayName']} · {details}")
    page.set_input_files("#query input[type=file]", str(catalogue / "images" / "1006.jpg"))
    expect(label).to_have_text("Your photo (drag a box to search part of it)")


@pytest.mark.parametrize("width", [1280, 390])
def test_every_result_card_shows_whole_and_a_phone_needs_no_sideways_scrolling(
    page, app_url, catalogue, tmp_path, width
):
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(app_url)
    upload_and_submit(page, catalogue / "images" / "1006.jpg")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    screenshot = tmp_path / f"page-{width}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    gallery = page.locator("#products").bounding_box()
    captions = [label.bounding_box() for label in page.locator("#products .caption-label").all()]
    assert len(captions) == 5
    assert all(box["y"] + box["height"] <= gallery["y"] + gallery["height"] + 0.5 for box in captions)
    assert page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")


OVERLAPS = """([a, b]) => {
    const r = a.getBoundingClientRect(), s = b.getBoundingClientRect();
    return r.left < s.right && s.left < r.right && r.top < s.bottom && s.top < r.bottom;
}"""


@pytest.mark.parametrize("width", [1280, 390])
def test_labels_stay_clear_of_the_buttons_and_the_cards(page, app_url, catalogue, tmp_path, width):
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(app_url)
    upload_and_submit(page, catalogue / "images" / "1006.jpg")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    page.locator("#products img").first.click()  # the photo's label becomes the product's name, longer
    page.wait_for_function("() => document.querySelector('#query > label').textContent.includes('More like this')")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    screenshot = tmp_path / f"labels-{width}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")

    photo_label = page.locator("#query > label[data-testid='block-label']").element_handle()
    buttons = page.locator("#query .icon-button").element_handles()
    assert buttons, "no buttons on the photo: nothing to keep its label clear of"
    for button in buttons:
        assert page.evaluate("(b) => b.getBoundingClientRect().width > 0", button)  # drawn, not hidden
        assert not page.evaluate(OVERLAPS, [photo_label, button])
    assert not page.evaluate(OVERLAPS, [photo_label, page.locator("#query img").element_handle()])
    gallery_label = page.locator("#products > label[data-testid='block-label']").element_handle()
    assert not page.evaluate(
        OVERLAPS, [gallery_label, page.locator("#products .thumbnail-item").first.element_handle()]
    )
    # The Options label's words end well before its arrow (measured on the glyphs: the label's box spans its line).
    text_right, arrow_left = page.evaluate("""() => {
        const label = document.querySelector('#options .label-wrap');
        const range = document.createRange();
        range.selectNodeContents(label.querySelector('span'));
        const arrow = label.querySelector('span.icon').getBoundingClientRect();
        return [Math.max(...[...range.getClientRects()].map(r => r.right)), arrow.left];
    }""")
    assert text_right + 8 <= arrow_left


def test_a_small_picture_is_drawn_up_to_its_frame_sharp_and_a_box_on_it_is_in_its_pixels(
    page, app_url, embedder, bundle_dir, tmp_path
):
    """The catalogue's pictures are 60x80: shown about 4 times larger, pixelated rather than blurred."""
    bundle = load_bundle(bundle_dir)
    photo = bundle.image_path(bundle.filenames.index("1005.jpg"))
    cropped = tmp_path / "cropped.png"
    open_image(photo).crop((10, 20, 50, 70)).save(cropped)
    page.goto(app_url)
    page.set_input_files("#query input[type=file]", str(photo))
    page.wait_for_function("() => document.querySelector('#query img')?.naturalWidth === 60")
    page.wait_for_function("() => document.querySelector('#query img').classList.contains('upscaled')")
    drawn = page.evaluate("""() => {
        const img = document.querySelector('#query img');
        const rect = img.getBoundingClientRect();
        return [Math.min(rect.width / 60, rect.height / 80), getComputedStyle(img).imageRendering];
    }""")
    assert drawn[0] > 3 and drawn[1] == "pixelated"
    drag_box(page, (10.2, 20.2), (50.2, 70.2))
    page.get_by_text("Options: number of results, filters, region").click()
    expect(page.locator("#region textarea, #region input").first).to_have_value("10, 20, 50, 70")
    page.get_by_role("button", name="Submit").click()
    shown = (
        "() => [...document.querySelectorAll('#products img')].map(img => decodeURIComponent(img.src).split('/').pop())"
    )
    expected = reference_top_k(embedder, bundle, cropped)[0]
    page.wait_for_function(f"expected => ({shown})().join() === expected.join()", arg=expected)
    screenshot = tmp_path / "small-picture.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")


def on_screen(page: Page):
    """A function from a point of the query photo, in the picture's own (upright) pixels, to the page's viewport."""
    page.locator("#query img").scroll_into_view_if_needed()
    assert page.evaluate("() => getComputedStyle(document.querySelector('#query img')).objectFit") == "contain"
    frame = page.evaluate("""() => {
        const img = document.querySelector('#query img');
        const rect = img.getBoundingClientRect();
        const scale = Math.min(rect.width / img.naturalWidth, rect.height / img.naturalHeight);
        return {scale, left: rect.left + (rect.width - img.naturalWidth * scale) / 2,
                top: rect.top + (rect.height - img.naturalHeight * scale) / 2};
    }""")
    return lambda x, y: (frame["left"] + x * frame["scale"], frame["top"] + y * frame["scale"])


def drag_box(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag the mouse on the query photo from one point to another, given in the picture's own pixels."""
    screen = on_screen(page)
    page.mouse.move(*screen(*start))
    page.mouse.down()
    page.mouse.move(*screen(*end), steps=8)
    page.mouse.up()


def test_a_box_drawn_on_the_photo_searches_that_region(page, app_url, embedder, bundle_dir, tmp_path):
    """A phone photo stored on its side with the product in a corner: the box is drawn on the picture as shown."""
    bundle = load_bundle(bundle_dir)
    product = Image.open(bundle.image_path(bundle.filenames.index("1002.jpg"))).convert("RGB").resize((180, 240))
    scene = Image.new("RGB", (540, 480), (200, 180, 150))
    scene.paste(product, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned on its side; the browser and the server show it upright
    photo = tmp_path / "street.jpg"
    scene.transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif, quality=95)
    box = (300, 200, 480, 440)
    cropped = tmp_path / "cropped.png"
    open_image(photo).crop(box).save(cropped)
    expected = reference_top_k(embedder, bundle, cropped)[0]

    page.goto(app_url)
    page.set_input_files("#query input[type=file]", str(photo))
    page.wait_for_function("() => document.querySelector('#query img')?.naturalWidth === 540")
    drag_box(page, (box[2] + 0.3, box[3] + 0.3), (box[0] + 0.3, box[1] + 0.3))  # from the bottom right corner
    page.get_by_text("Options: number of results, filters, region").click()
    expect(page.locator("#region textarea, #region input").first).to_have_value("300, 200, 480, 440")
    expect(page.locator("#query .region-box")).to_be_visible()
    page.get_by_role("button", name="Submit").click()
    shown = (
        "() => [...document.querySelectorAll('#products img')].map(img => decodeURIComponent(img.src).split('/').pop())"
    )
    page.wait_for_function(f"expected => ({shown})().join() === expected.join()", arg=expected)
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        screenshot = tmp_path / f"region-{width}.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")

    # A click without a drag clears the box; a new photo starts without one.
    page.set_viewport_size({"width": 1280, "height": 1000})
    drag_box(page, (100, 100), (100, 100))
    expect(page.locator("#region textarea, #region input").first).to_have_value("")
    expect(page.locator("#query .region-box")).to_be_hidden()
    drag_box(page, (10, 10), (600, 560))  # let go past the picture's corner: the box stops at its edges
    expect(page.locator("#region textarea, #region input").first).to_have_value("10, 10, 540, 480")
    page.locator("#region textarea, #region input").first.fill("0, 0, 270, 240")  # typed: drawn as well
    halves = """() => {
        const box = document.querySelector('#query .region-box').getBoundingClientRect();
        const img = document.querySelector('#query img');
        const scale = Math.min(img.width / img.naturalWidth, img.height / img.naturalHeight);
        return [box.width / (270 * scale), box.height / (240 * scale)];
    }"""
    page.wait_for_function(f"() => ({halves})().every(ratio => Math.abs(ratio - 1) < 0.02)")
    page.set_input_files("#query input[type=file]", str(cropped))
    page.wait_for_function("() => document.querySelector('#query img')?.naturalWidth === 180")
    expect(page.locator("#region textarea, #region input").first).to_have_value("")
    expect(page.locator("#query .region-box")).to_be_hidden()


def test_on_a_phone_a_box_dragged_with_a_finger_searches_that_region(app_url, embedder, bundle_dir, tmp_path):
    """A touch drag ends without a click; the page still takes the box (fashion_search/region_box.js clicks for it)."""
    bundle = load_bundle(bundle_dir)
    scene = Image.new("RGB", (400, 300), (90, 140, 90))
    scene.paste(Image.open(bundle.image_path(bundle.filenames.index("1005.jpg"))).convert("RGB"), (40, 50))
    photo = tmp_path / "phone.png"
    scene.save(photo)
    cropped = tmp_path / "cropped.png"
    scene.crop((30, 40, 120, 150)).save(cropped)
    expected = reference_top_k(embedder, bundle, cropped)[0]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=2
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url)
        page.set_input_files("#query input[type=file]", str(photo))
        page.wait_for_function("() => document.querySelector('#query img')?.naturalWidth === 400")
        screen = on_screen(page)

        def touch(x: float, y: float) -> list[dict]:
            return [dict(zip("xy", screen(x, y)))]

        cdp = context.new_cdp_session(page)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": touch(30.2, 40.2)})
        for step in range(1, 9):
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": "touchMove", "touchPoints": touch(30.2 + 11.25 * step, 40.2 + 13.75 * step)},
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.get_by_text("Options: number of results, filters, region").click()
        expect(page.locator("#region textarea, #region input").first).to_have_value("30, 40, 120, 150")
        page.get_by_role("button", name="Submit").click()
        shown = (
            "() => [...document.querySelectorAll('#products img')].map(i => decodeURIComponent(i.src).split('/').pop())"
        )
        page.wait_for_function(f"expected => ({shown})().join() === expected.join()", arg=expected)
        page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
        screenshot = tmp_path / "phone-region.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        context.close()
        browser.close()


def test_a_file_that_is_not_a_picture_is_refused_as_it_is_dropped(page, app_url, tmp_path):
    """At once, with the message the API gives; the photo stays empty (no blank frame waiting for Submit)."""
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"this is a text file with a picture's name")
    with pytest.raises(ImageError) as expected:
        open_image(fake.read_bytes())

    page.goto(app_url)
    page.set_input_files("#query input[type=file]", str(fake))
    toast = page.get_by_text(str(expected.value))
    toast.wait_for()
    assert toast.is_visible()
    expect(page.locator("#query img")).to_have_count(0)
    screenshot = tmp_path / "refused.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    page.get_by_role("button", name="Submit").click()  # nothing to search: the page says so
    page.get_by_text("Please upload a photo of a product first").wait_for()


def test_the_options_offer_top_k_and_a_filter_per_metadata_column(page, app_url):
    page.goto(app_url)
    page.get_by_text("Options: number of results, filters, region").click()
    for label in ["Number of results", "Gender", "Category", "Article type", "Colour", "Region of the photo"]:
        expect(page.get_by_text(label, exact=True).first).to_be_visible()


def test_a_space_like_run_with_ssr_and_random_weights(page, tmp_path):
    """`python app.py` configured only by environment, as on a Space (SSR on there): the page warns, and works."""
    bundle = build_random_weights_bundle(tmp_path / "random")
    port = free_port()
    env = app_env(
        tmp_path,
        FASHION_CATALOG=str(bundle),
        FASHION_WEIGHTS="random",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_SSR_MODE="true",
    )
    with AppProcess([], env, tmp_path / "app.log") as app:
        url = app.wait_ready(port)
        page.goto(url)
        expect(page.get_by_text("This app runs with random model weights")).to_be_visible()
        upload_and_submit(page, bundle / "images" / "1002.jpg")
        page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
        drag_box(page, (2, 3), (40, 50))  # the page's own script runs with SSR too
        page.get_by_text("Options: number of results, filters, region").click()
        expect(page.locator("#region textarea, #region input").first).to_have_value("2, 3, 40, 50")
        screenshot = tmp_path / "space-like.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
    assert "with SSR" in (tmp_path / "app.log").read_text()


# ---------------------------------------------------------------- a first visit


SHOWN_FILES = "() => [...document.querySelectorAll('#products img')].map(img => decodeURIComponent(img.src))"


@pytest.mark.parametrize("width", [1280, 390])
def test_a_click_on_an_example_shows_its_results_without_submit(page, app_url, tmp_path, width):
    page.set_viewport_size({"width": width, "height": 844})
    page.goto(app_url)
    page.locator("button.gallery-item").first.click()
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)  # no Submit: the example's search ran on its own
    expect(page.locator("#products .caption-label")).to_have_count(5)
    screenshot = tmp_path / f"example-{width}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")


@pytest.mark.parametrize("width", [1280, 390])
def test_an_error_keeps_the_results_and_their_labels_and_says_so_once(page, app_url, catalogue, tmp_path, width):
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(app_url)
    upload_and_submit(page, catalogue / "images" / "1002.jpg")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
    before = page.evaluate(SHOWN_FILES)

    page.get_by_text("Options: number of results, filters, region").click()
    page.locator("#region textarea, #region input").first.fill("1000, 1000, 2000, 2000")
    page.get_by_role("button", name="Submit").click()
    notice = page.get_by_text("The region (1000, 1000, 2000, 2000) is outside the picture")
    notice.wait_for()
    expect(notice).to_have_count(1)
    # The event is over (its status no longer shown on the gallery), and the gallery is as it was.
    page.wait_for_function("() => document.querySelector('#products > .wrap').classList.contains('hide')")
    assert page.evaluate(SHOWN_FILES) == before
    expect(page.locator("#products .caption-label")).to_have_count(5)
    expect(page.get_by_text("Similar products", exact=True)).to_be_visible()
    expect(page.get_by_text("Results", exact=True)).to_be_visible()
    expect(page.locator("#products .error, .block .error")).to_have_count(0)  # no red "Error" badge on the outputs
    screenshot = tmp_path / f"error-{width}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")


def test_on_a_phone_the_examples_come_right_under_the_photo_and_the_api_link_shows(page, app_url, tmp_path):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(app_url)
    page.locator("button.gallery-item").first.wait_for()
    tops = page.evaluate(
        """() => Object.fromEntries(Object.entries({
            photo: '#query', examples: 'button.gallery-item', options: '#options', results: '#products',
        }).map(([name, selector]) => [name, document.querySelector(selector).getBoundingClientRect().top]))"""
    )
    assert tops["photo"] < tops["examples"] < tops["options"] < tops["results"], tops
    photo_bottom = page.locator("#query").bounding_box()
    assert tops["examples"] - (photo_bottom["y"] + photo_bottom["height"]) < 80, tops  # right under the photo
    expect(page.get_by_role("button", name="Use via API or MCP")).to_be_visible()
    screenshot = tmp_path / "phone-first-screen.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
