"""The built-in prompt library (``--validation_prompt_library``): a spread of subjects
that show different failures (faces, hands, text, scenery, materials, composition)."""

BUILTIN_PROMPTS: dict[str, str] = {
    "portrait": "a close-up portrait of an old fisherman with a grey beard, soft window light",
    "hands": "two hands holding a steaming cup of tea, photograph",
    "sign_text": "a wooden shop sign that reads OPEN in white painted letters",
    "city_night": "a rainy city street at night with neon reflections on the road",
    "mountain_lake": "a calm mountain lake at sunrise with pine trees on the shore",
    "glass_still_life": "a glass bottle and three lemons on a marble table, studio lighting",
    "cat_window": "a ginger cat sitting on a window sill looking outside",
    "anime_girl": "an anime illustration of a girl with a red umbrella in the snow",
    "isometric_room": "an isometric 3d render of a cosy bedroom with a desk and plants",
    "crowd": "a crowded market square seen from above, many people and colourful stalls",
}
