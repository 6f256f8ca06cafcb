namespace Peft.Plugins.Lora; public sealed class Placeholder {}
